// User claims and chat idempotency keys with @ably/chat 1.4.0 (ably-chat.md §5.4, §5.10),
// both wire formats.
//
// alice's and bob's JWTs carry the user claim `ably.room.<room>`: the broker sets it as
// `extras.userClaim` on what each sends in that room, and the Chat SDK shows it as
// `userClaim` on the message sent, the message event, history(), get(), a room reaction, a
// presence event and presence.get()'s member. bob (with message-update-any) edits alice's message: the edit keeps
// alice's claim. A room the token names no claim for gets none.
//
// With `idempotentRestPublishing` the Chat SDK sends an `idempotencyKey` on every send, edit
// and delete, which the broker accepts; the same key sent twice (through
// `realtime.request()`) answers the first message and stores it once.
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

describe('@ably/chat user claims and idempotency keys', () => {
  const key = makeKey('conformance.root');
  let broker;
  before(async () => {
    broker = await startBroker({ keys: [key.full], label: 'user-claims' });
  });
  after(async () => {
    await broker?.stop();
  });

  for (const format of FORMATS) {
    test(`[${format.name}] a token's room claim is the userClaim of messages, edits by others, reactions and presence`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('claims-room');
      const claimed = (who) => ({ [`ably.room.${name}`]: `${who}-claim` });
      const alice = chatClient(ctx, format, { key, clientId: 'alice', claims: claimed('alice') });
      const bob = chatClient(ctx, format, { key, clientId: 'bob', claims: claimed('bob') });
      const [roomA, roomB] = await Promise.all([attachedRoom(alice, name), attachedRoom(bob, name)]);
      const atBob = collector('chat messages');
      roomB.messages.subscribe(atBob.listener);
      const reactionsAtBob = collector('room reactions');
      roomB.reactions.subscribe(reactionsAtBob.listener);

      const sent = await withTimeout(roomA.messages.send({ text: 'claimed' }), T.event, 'alice messages.send()');
      assert.equal(sent.userClaim, 'alice-claim', 'the message sent');
      const got = await atBob.waitForMatch((e) => e.message.serial === sent.serial, "bob's message event");
      assert.equal(got.message.userClaim, 'alice-claim', 'the message event');

      await withTimeout(roomA.reactions.send({ name: '👍' }), T.event, 'alice reactions.send()');
      const reaction = await reactionsAtBob.waitForMatch((e) => e.reaction.clientId === 'alice', "bob's room reaction");
      assert.equal(reaction.reaction.userClaim, 'alice-claim', 'the room reaction');

      const presenceAtBob = collector('presence events');
      roomB.presence.subscribe(presenceAtBob.listener);
      await withTimeout(roomA.presence.enter({ status: 'here' }), T.event, 'alice presence.enter()');
      const entered = await presenceAtBob.waitForMatch(
        (e) => e.type === 'enter' && e.member.clientId === 'alice',
        "bob's presence event: alice entered",
      );
      assert.equal(entered.member.userClaim, 'alice-claim', 'the presence event');
      const members = await withTimeout(roomB.presence.get({ clientId: 'alice' }), T.event, 'bob presence.get()');
      assert.equal(members.length, 1, 'alice is present');
      assert.equal(members[0].userClaim, 'alice-claim', 'the presence member');

      // bob's token has every right: his edit of alice's message keeps her claim.
      const edited = await withTimeout(roomB.messages.update(sent.serial, { text: 'tidied' }), T.event, 'bob messages.update()');
      assert.equal(edited.version.clientId, 'bob', 'bob edited it');
      assert.equal(edited.userClaim, 'alice-claim', "the edit keeps the author's claim");
      const update = await atBob.waitForMatch((e) => e.type === 'message.updated', 'the update event');
      assert.equal(update.message.userClaim, 'alice-claim', 'the update event');

      const page = await withTimeout(roomB.messages.history({ limit: 10 }), T.event, 'bob messages.history()');
      assert.deepEqual(page.items.map((m) => `${m.text}:${m.userClaim}`), ['tidied:alice-claim'], 'history');
      const one = await withTimeout(roomB.messages.get(sent.serial), T.event, 'bob messages.get()');
      assert.equal(one.userClaim, 'alice-claim', 'get()');

      // Another room: no claim for it in the token.
      const other = await attachedRoom(alice, uniqueChannel('claims-none'));
      const plain = await withTimeout(other.messages.send({ text: 'plain' }), T.event, 'alice send elsewhere');
      assert.equal(plain.userClaim, undefined, 'no claim in a room the token does not name');
    }));

    test(`[${format.name}] idempotency keys: the SDK's are accepted, a repeated key answers the first message once`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('claims-idem');
      const alice = chatClient(ctx, format, {
        key,
        clientId: 'alice',
        chatOptions: { idempotentRestPublishing: true },
      });
      const room = await attachedRoom(alice, name);
      const sent = await withTimeout(room.messages.send({ text: 'keyed' }), T.event, 'messages.send()');
      const edited = await withTimeout(room.messages.update(sent.serial, { text: 'keyed (edited)' }), T.event, 'messages.update()');
      assert.equal(edited.text, 'keyed (edited)', 'the edit');
      const deleted = await withTimeout(room.messages.delete(sent.serial), T.event, 'messages.delete()');
      assert.equal(deleted.action, 'message.delete', 'the delete');

      const path = `/chat/v4/rooms/${encodeURIComponent(name)}/messages`;
      const send = () => withTimeout(
        alice.realtime.request('POST', path, 4, { idempotencyKey: 'same-key' }, { text: 'once' }),
        T.event,
        'POST …/messages?idempotencyKey=same-key',
      );
      const [first, again] = [await send(), await send()];
      assert.equal(first.statusCode, 201, 'first send');
      assert.equal(again.statusCode, 201, 'repeat');
      assert.equal(again.items[0].serial, first.items[0].serial, 'the repeat answers the first message');
      const page = await withTimeout(room.messages.history({ limit: 10 }), T.event, 'messages.history()');
      assert.deepEqual(page.items.map((m) => m.text), ['once', 'keyed (edited)'], 'stored once');

      const tooLong = await alice.realtime.request('POST', path, 4, { idempotencyKey: 'x'.repeat(257) }, { text: 'no' });
      assert.equal(tooLong.statusCode, 400, 'a 257-character key');
      assert.equal(tooLong.errorCode, 40003, 'refused with 40003');
    }));
  }
});
