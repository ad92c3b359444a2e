// @ably/chat, the Chat SDK, against the broker (issue 18) (ably-protocol.md §5.1, §5.4,
// §6, §7.1, §8.8, §9.2).
//
// Two users, alice and bob, each a ChatClient (lib/chat.js) on a JWT carrying their
// clientId, in one room, once per wire format: the room attaches on `<name>::$chat`; one
// user's typing keystroke and stop(), room reaction and presence enter reach the other
// through the Chat SDK's own listeners, and presence.get() lists both members.
//
// Chat messages go through the chat REST API (`/chat/v4/rooms/<name>/messages…`, ably-chat.md
// §5.4): sent, received, edited and deleted, listed by history() and historyBeforeSubscribe()
// once each in their latest version, read by get() and getVersions(); an edit of another
// user's message needs message-update-any. occupancy.get() reads `…/occupancy`, and occupancy
// events (`[meta]occupancy` for the `occupancy: metrics` attach param that
// `occupancy: { enableEvents: true }` sends) reach a room's `occupancy.subscribe()`. Typing
// and room reactions are ephemeral (`extras.ephemeral`): never in history or a rewind. The
// Chat SDK is granted the ANNOTATION_PUBLISH mode it asks for; message reactions (`…/reactions`,
// annotations of type `reaction:<unique|distinct|multiple>.v1`, §5.6) add up in the summaries
// both users' `reactions.subscribe()` get, and in get(), history() and clientReactions().
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  makeKey,
  startBroker,
  withCtx,
  withTimeout,
  uniqueChannel,
  collector,
} from '../lib/helpers.js';
import { chatClient, attachedRoom } from '../lib/chat.js';

describe('@ably/chat', () => {
  const key = makeKey('conformance.root');
  let broker;
  before(async () => {
    broker = await startBroker({ keys: [key.full], label: 'chat' });
  });
  after(async () => {
    await broker?.stop();
  });

  /** Every chat feature with the `-own` edit rights only (ably-chat.md §5.1). */
  const CHAT_USER = {
    '*': [
      'publish', 'subscribe', 'presence', 'history', 'channel-metadata',
      'annotation-publish', 'annotation-subscribe', 'message-update-own', 'message-delete-own',
    ],
  };

  /**
   * alice and bob as ChatClients on `format`, both attached to the room `name`; `capability`
   * is theirs (default: everything).
   */
  async function aliceAndBob(ctx, format, name, options, capability) {
    const alice = chatClient(ctx, format, { key, clientId: 'alice', capability });
    const bob = chatClient(ctx, format, { key, clientId: 'bob', capability });
    const [roomA, roomB] = await Promise.all([
      attachedRoom(alice, name, options),
      attachedRoom(bob, name, options),
    ]);
    return { alice, bob, roomA, roomB };
  }

  /** The modes the broker granted a room's channel, from ATTACHED's params (§8.8). */
  const grantedModes = (room) => (room.channel.params?.modes ?? '').split(',').filter(Boolean);

  for (const format of FORMATS) {
    test(`[${format.name}] a room attaches on its ::$chat channel`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('chat-room');
      const { alice, roomA, roomB } = await aliceAndBob(ctx, format, name);
      assert.equal(alice.clientId, 'alice', 'clientId from the JWT');
      for (const [who, room] of [['alice', roomA], ['bob', roomB]]) {
        assert.equal(room.status, 'attached', `${who}: room status`);
        assert.equal(room.channel.name, `${name}::$chat`, `${who}: the room's channel`);
        assert.equal(room.channel.state, 'attached', `${who}: channel state`);
        // Asked for (presence events are on by default) and allowed by the key.
        const granted = grantedModes(room);
        for (const mode of ['publish', 'subscribe', 'presence', 'presence_subscribe']) {
          assert.ok(granted.includes(mode), `${who}: mode ${mode} granted (got ${granted})`);
        }
      }
    }));

    test(`[${format.name}] typing: a keystroke and stop() reach the other user`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('chat-typing');
      const { roomA, roomB } = await aliceAndBob(ctx, format, name);
      const events = collector('typing events');
      roomB.typing.subscribe(events.listener);

      await withTimeout(roomA.typing.keystroke(), T.event, 'alice typing.keystroke()');
      const started = await events.waitForMatch(
        (e) => e.change.clientId === 'alice' && e.change.type === 'typing.started',
        "bob's typing event: alice started",
      );
      assert.equal(started.type, 'typing.set.changed', 'event type');
      assert.deepEqual([...started.currentlyTyping], ['alice'], 'currentlyTyping in the event');
      assert.deepEqual(started.currentTypers.map((m) => m.clientId), ['alice'], 'currentTypers in the event');
      assert.deepEqual([...roomB.typing.current], ['alice'], "bob's typing.current");

      await withTimeout(roomA.typing.stop(), T.event, 'alice typing.stop()');
      const stopped = await events.waitForMatch(
        (e) => e.change.clientId === 'alice' && e.change.type === 'typing.stopped',
        "bob's typing event: alice stopped",
      );
      assert.deepEqual([...stopped.currentlyTyping], [], 'nobody typing after stop()');
      assert.deepEqual([...roomB.typing.current], [], "bob's typing.current after stop()");
    }));

    test(`[${format.name}] a room reaction reaches the other user with its metadata and headers`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('chat-reactions');
      const { roomA, roomB } = await aliceAndBob(ctx, format, name);
      const atAlice = collector('reactions');
      const atBob = collector('reactions');
      roomA.reactions.subscribe(atAlice.listener);
      roomB.reactions.subscribe(atBob.listener);

      const metadata = { effect: 'confetti', count: 3, nested: { list: [1, 'two', null] } };
      const headers = { source: 'keyboard', burst: 2 };
      await withTimeout(roomA.reactions.send({ name: '👍', metadata, headers }), T.event, 'alice reactions.send()');

      const got = await atBob.waitForMatch((e) => e.reaction.clientId === 'alice', "bob's reaction event from alice");
      assert.equal(got.type, 'reaction', 'event type');
      assert.equal(got.reaction.name, '👍', 'reaction name');
      assert.deepEqual(got.reaction.metadata, metadata, 'reaction metadata');
      assert.deepEqual(got.reaction.headers, headers, 'reaction headers');
      assert.equal(got.reaction.isSelf, false, 'isSelf at bob');
      assert.ok(!Number.isNaN(got.reaction.createdAt.getTime()), 'createdAt');
      // The sender gets its own reaction back (echo), marked as its own.
      const own = await atAlice.waitForMatch((e) => e.reaction.clientId === 'alice', "alice's own reaction event");
      assert.equal(own.reaction.isSelf, true, 'isSelf at alice');
      assert.equal(atBob.messages.length, 1, 'bob got exactly one reaction');
    }));

    test(`[${format.name}] presence: an enter is seen by the other user and in presence.get()`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('chat-presence');
      const { alice, bob, roomA, roomB } = await aliceAndBob(ctx, format, name);
      const atAlice = collector('presence events');
      const atBob = collector('presence events');
      roomA.presence.subscribe(atAlice.listener);
      roomB.presence.subscribe(atBob.listener);

      const aliceData = { status: 'online', avatar: 'https://example.test/a.png', tags: ['x', 1, null] };
      const bobData = { status: 'away' };
      await withTimeout(roomA.presence.enter(aliceData), T.event, 'alice presence.enter()');
      const seen = await atBob.waitForMatch(
        (e) => e.type === 'enter' && e.member.clientId === 'alice',
        "bob's presence event: alice entered",
      );
      assert.deepEqual(seen.member.data, aliceData, 'member data');
      assert.equal(seen.member.connectionId, alice.realtime.connection.id, "member's connectionId");
      assert.ok(!Number.isNaN(seen.member.updatedAt.getTime()), 'updatedAt');

      await withTimeout(roomB.presence.enter(bobData), T.event, 'bob presence.enter()');
      await atAlice.waitForMatch(
        (e) => e.type === 'enter' && e.member.clientId === 'bob',
        "alice's presence event: bob entered",
      );

      const members = (list) => list.map((m) => `${m.clientId}=${JSON.stringify(m.data)}`).sort();
      const expected = [`alice=${JSON.stringify(aliceData)}`, `bob=${JSON.stringify(bobData)}`];
      const [getA, getB] = await Promise.all([
        withTimeout(roomA.presence.get(), T.event, 'alice presence.get()'),
        withTimeout(roomB.presence.get(), T.event, 'bob presence.get()'),
      ]);
      assert.deepEqual(members(getA), expected, "alice's presence.get()");
      assert.deepEqual(members(getB), expected, "bob's presence.get()");
      assert.equal(
        getB.find((m) => m.clientId === 'bob').connectionId,
        bob.realtime.connection.id,
        "bob's own member's connectionId",
      );
      assert.equal(
        await withTimeout(roomB.presence.isUserPresent('alice'), T.event, 'isUserPresent'),
        true,
        'isUserPresent(alice)',
      );
    }));

    test(`[${format.name}] messages: send, receive, edit, delete, history, get and versions`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('chat-messages');
      const { roomA, roomB } = await aliceAndBob(ctx, format, name);
      const atBob = collector('chat messages');
      roomB.messages.subscribe(atBob.listener);
      const send = (params) => withTimeout(roomA.messages.send(params), T.event, 'alice messages.send()');

      const first = await send({ text: 'first' });
      const sent = await send({ text: 'hello ✓', metadata: { m: [1, 2] }, headers: { h: 'v', n: 3 } });
      assert.equal(sent.action, 'message.create', 'action of the message sent');
      assert.equal(sent.version.serial, sent.serial, 'a create is its own version');
      const got = await atBob.waitForMatch(
        (e) => e.message.serial === sent.serial,
        "bob's message event",
      );
      assert.equal(got.type, 'message.created', 'event type');
      assert.equal(got.message.text, 'hello ✓', 'text');
      assert.equal(got.message.clientId, 'alice', 'clientId');
      assert.deepEqual(got.message.metadata, { m: [1, 2] }, 'metadata');
      assert.deepEqual(got.message.headers, { h: 'v', n: 3 }, 'headers');

      const edited = await withTimeout(
        roomA.messages.update(sent.serial, { text: 'hello (edited)' }, { description: 'typo' }),
        T.event,
        'alice messages.update()',
      );
      assert.equal(edited.action, 'message.update', 'action of the edit');
      assert.equal(edited.serial, sent.serial, 'the edit keeps the serial');
      assert.equal(edited.text, 'hello (edited)', 'edited text');
      assert.deepEqual(edited.metadata, {}, 'PUT semantics: metadata omitted is {}');
      assert.equal(edited.version.clientId, 'alice', 'who edited');
      assert.equal(edited.version.description, 'typo', 'why');
      assert.ok(edited.version.serial > sent.serial, 'the version sorts after the original');
      const update = await atBob.waitForMatch((e) => e.type === 'message.updated', "bob's update event");
      assert.equal(update.message.serial, sent.serial, 'update of the message sent');
      assert.equal(update.message.text, 'hello (edited)', 'updated text at bob');

      const deleted = await withTimeout(
        roomA.messages.delete(first.serial, { description: 'gone' }),
        T.event,
        'alice messages.delete()',
      );
      assert.equal(deleted.action, 'message.delete', 'action of the delete');
      assert.equal(deleted.version.description, 'gone', 'why it was deleted');
      const deletion = await atBob.waitForMatch((e) => e.type === 'message.deleted', "bob's delete event");
      assert.equal(deletion.message.serial, first.serial, 'delete of the first message');

      // Each message once, at its original's place, in its latest version.
      const page = await withTimeout(roomB.messages.history({ limit: 10 }), T.event, 'bob messages.history()');
      assert.deepEqual(
        page.items.map((m) => `${m.serial === sent.serial ? 'sent' : 'first'}:${m.action}:${m.text}`),
        ['sent:message.update:hello (edited)', 'first:message.delete:first'],
        'history',
      );
      const one = await withTimeout(roomB.messages.get(sent.serial), T.event, 'bob messages.get()');
      assert.equal(one.text, 'hello (edited)', 'get() reads the latest version');
      const versions = await withTimeout(roomB.messages.getVersions(sent.serial), T.event, 'getVersions()');
      assert.deepEqual(
        versions.items.map((m) => `${m.action}:${m.text}`),
        ['message.create:hello ✓', 'message.update:hello (edited)'],
        'versions, oldest first',
      );

      // A subscription made now starts at the channelSerial of the last event (the delete's
      // version): historyBeforeSubscribe() lists everything up to it.
      const late = roomB.messages.subscribe(() => {});
      const before = await withTimeout(late.historyBeforeSubscribe({ limit: 10 }), T.event, 'historyBeforeSubscribe()');
      assert.deepEqual(before.items.map((m) => m.text), ['hello (edited)', 'first'], 'historyBeforeSubscribe');
    }));

    test(`[${format.name}] messages: an edit or delete of another user's message is refused`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('chat-forbidden');
      const { roomA, roomB } = await aliceAndBob(ctx, format, name, undefined, CHAT_USER);
      const sent = await withTimeout(roomA.messages.send({ text: 'mine' }), T.event, 'alice messages.send()');
      await assert.rejects(
        withTimeout(roomB.messages.update(sent.serial, { text: 'hijacked' }), T.event, 'bob messages.update()'),
        (e) => e.code === 40160,
        "bob's edit of alice's message: 40160",
      );
      await assert.rejects(
        withTimeout(roomB.messages.delete(sent.serial), T.event, 'bob messages.delete()'),
        (e) => e.code === 40160,
        "bob's delete of alice's message: 40160",
      );
      const own = await withTimeout(roomA.messages.update(sent.serial, { text: 'still mine' }), T.event, 'alice messages.update()');
      assert.equal(own.text, 'still mine', "alice edits her own message");
      const latest = await withTimeout(roomB.messages.get(sent.serial), T.event, 'bob messages.get()');
      assert.equal(latest.text, 'still mine', 'only her edit was applied');
    }));

    test(`[${format.name}] occupancy: get() counts both users`, withCtx(() => broker, async (ctx) => {
      const { roomA } = await aliceAndBob(ctx, format, uniqueChannel('chat-occupancy-get'));
      const now = await withTimeout(roomA.occupancy.get(), T.event, 'alice occupancy.get()');
      assert.deepEqual(now, { connections: 2, presenceMembers: 0 }, 'occupancy from get()');
    }));

    // The events have a test of their own below: subscribed only now, alice may have had the
    // event counting bob already, and the next comes only after the 15 s interval.
    test(`[${format.name}] occupancy: get() counts both users with events enabled`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('chat-occupancy');
      const { roomA } = await aliceAndBob(ctx, format, name, { occupancy: { enableEvents: true } });
      const now = await withTimeout(roomA.occupancy.get(), T.event, 'alice occupancy.get()');
      assert.equal(now.connections, 2, 'connections from get()');
    }));

    test(`[${format.name}] occupancy events: one after attach, then a first presence member at once`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('chat-occupancy-events');
      const options = { occupancy: { enableEvents: true } };
      const alice = chatClient(ctx, format, { key, clientId: 'alice' });
      const bob = chatClient(ctx, format, { key, clientId: 'bob' });
      const roomA = await withTimeout(alice.rooms.get(name, options), T.event, 'alice rooms.get()');
      const events = collector('occupancy events');
      // Subscribed before the attach, so the event that follows ATTACHED is not missed.
      roomA.occupancy.subscribe(events.listener);
      await withTimeout(roomA.attach(), T.event, 'alice room attach');
      const first = await events.waitForMatch((e) => e.occupancy.connections === 1, "alice's first occupancy event");
      assert.equal(first.type, 'occupancy.updated', 'event type');
      assert.equal(first.occupancy.presenceMembers, 0, 'no members yet');

      // bob's attach changes no count from zero (it waits for the 15 s interval); his enter
      // takes presenceMembers from zero, so it goes out at once, with both changes.
      const roomB = await attachedRoom(bob, name, options);
      await withTimeout(roomB.presence.enter({ status: 'here' }), T.event, 'bob presence.enter()');
      const later = await events.waitForMatch((e) => e.occupancy.presenceMembers === 1, 'an occupancy event with 1 member');
      assert.equal(later.occupancy.connections, 2, 'connections after bob');
      assert.deepEqual(roomA.occupancy.current, { connections: 2, presenceMembers: 1 }, 'occupancy.current');
    }));

    test(`[${format.name}] the ANNOTATION_PUBLISH mode is granted (message reactions)`, withCtx(() => broker, async (ctx) => {
      const { roomA } = await aliceAndBob(ctx, format, uniqueChannel('chat-annotations'));
      const granted = grantedModes(roomA);
      assert.ok(granted.includes('annotation_publish'), `annotation_publish granted (got ${granted})`);
    }));

    test(`[${format.name}] message reactions add up in summaries both users see; get(), history() and clientReactions() read them back`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('chat-reactions');
      const { roomA, roomB } = await aliceAndBob(ctx, format, name, undefined, CHAT_USER);
      const atAlice = collector('reaction summaries');
      roomA.messages.reactions.subscribe(atAlice.listener);
      const sent = await withTimeout(roomA.messages.send({ text: 'react to me' }), T.event, 'messages.send()');
      const reactions = (who, room) => ({
        send: (params) => withTimeout(room.messages.reactions.send(sent.serial, params), T.event, `${who} reactions.send()`),
        delete: (params) => withTimeout(room.messages.reactions.delete(sent.serial, params), T.event, `${who} reactions.delete()`),
      });
      const [byAlice, byBob] = [reactions('alice', roomA), reactions('bob', roomB)];
      await byBob.send({ type: 'distinct', name: '👍' });
      await byAlice.send({ type: 'distinct', name: '👍' });
      await byAlice.send({ type: 'unique', name: '❤️' });
      await byBob.send({ type: 'multiple', name: '🎉', count: 2 });
      await byBob.send({ type: 'multiple', name: '🎉' });
      const all = await atAlice.waitForMatch(
        (e) => e.reactions.multiple['🎉']?.total === 3 && e.reactions.unique['❤️'],
        'a summary with every reaction',
      );
      assert.equal(all.messageSerial, sent.serial, 'the summary names the message');
      assert.deepEqual(all.reactions.distinct['👍'], { total: 2, clientIds: ['bob', 'alice'], clipped: false });
      assert.deepEqual(all.reactions.unique['❤️'].clientIds, ['alice']);
      assert.deepEqual(all.reactions.multiple['🎉'].clientIds, { bob: 3 });

      // unique.v1: a second unique reaction moves alice's.
      await byAlice.send({ type: 'unique', name: '😂' });
      const moved = await atAlice.waitForMatch((e) => e.reactions.unique['😂'], 'the summary after the move');
      assert.equal(moved.reactions.unique['❤️'], undefined, 'a client holds one unique reaction');

      const mine = await withTimeout(roomB.messages.reactions.clientReactions(sent.serial), T.event, 'bob clientReactions()');
      assert.deepEqual(mine.distinct['👍'], { total: 2, clientIds: ['bob'], clipped: true }, "bob's own, with the whole total");
      assert.deepEqual(mine.unique, {}, 'bob holds no unique reaction');

      await byBob.delete({ type: 'distinct', name: '👍' });
      const removed = await atAlice.waitForMatch(
        // The first summary had bob alone: this one has alice alone.
        (e) => e.reactions.distinct['👍']?.total === 1 && e.reactions.distinct['👍'].clientIds[0] === 'alice',
        'the summary after bob took his 👍 back',
      );
      assert.deepEqual(removed.reactions.distinct['👍'].clientIds, ['alice']);

      const got = await withTimeout(roomB.messages.get(sent.serial), T.event, 'messages.get()');
      assert.deepEqual(got.reactions.distinct['👍'].clientIds, ['alice'], 'get() carries the reactions');
      assert.equal(got.reactions.multiple['🎉'].total, 3);
      const page = await withTimeout(roomB.messages.history({ limit: 10 }), T.event, 'messages.history()');
      assert.equal(page.items.length, 1, 'reactions are no messages');
      assert.deepEqual(page.items[0].reactions.unique['😂'].clientIds, ['alice'], 'history carries the reactions');
    }));

    test(`[${format.name}] typing and room reactions stay out of history and rewind`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('chat-ephemeral');
      const { roomA } = await aliceAndBob(ctx, format, name);
      await withTimeout(roomA.typing.keystroke(), T.event, 'alice typing.keystroke()');
      await withTimeout(roomA.reactions.send({ name: 'wave' }), T.event, 'alice reactions.send()');
      await withTimeout(roomA.typing.stop(), T.event, 'alice typing.stop()');
      // A stored message last: a rewind delivers its backlog before anything live (§5.4).
      await withTimeout(roomA.channel.publish('sentinel', 'last'), T.event, 'publish of the sentinel');
      const page = await withTimeout(roomA.channel.history(), T.event, 'history()');
      assert.deepEqual(page.items.map((m) => m.name), ['sentinel'], 'history holds only the stored message');
      const late = ctx.realtime(format, { key: key.full }, { label: `late-${format.name}` });
      const rewound = collector('rewound messages');
      await withTimeout(
        late.channels.get(`${name}::$chat`, { params: { rewind: '10' } }).subscribe(rewound.listener),
        T.event,
        'late attach with rewind',
      );
      await rewound.waitForName('sentinel', T.event);
      assert.deepEqual(rewound.messages.map((m) => m.name), ['sentinel'], 'rewind replays only the stored message');
    }));
  }
});
