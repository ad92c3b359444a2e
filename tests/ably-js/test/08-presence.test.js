// Presence (ably-protocol.md §6, §8.7, §9.2, §11, §12(b)).
//
// Two brokers: `broker` with leave_grace_ms = GRACE (long enough for a resume to fit in
// it) and `quick` with leave_grace_ms = QUICK_GRACE for the "dropped and never back"
// case. Nothing asserts on wall-clock time: leaves and "no event" are shown by the
// order in which events arrive.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  makeKey,
  mintJwt,
  rnd,
  startBroker,
  withCtx,
  connectionState,
  nextEvent,
  uniqueChannel,
  collector,
  describeEvents,
  withTimeout,
  rejectionOf,
  sameData,
  describeData,
} from '../lib/helpers.js';

const GRACE = 4000;
const QUICK_GRACE = 800;
const MAX_SIZE = 16384;

/** Sorted clientIds of a member list. */
const ids = (items) => items.map((m) => m.clientId).sort();
/** Events as 'action:clientId', optionally only for some clientIds. */
const evs = (items, only) =>
  items.filter((m) => !only || only.includes(m.clientId)).map((m) => `${m.action}:${m.clientId}`);

/** Await a presence event with this action and clientId on a collector. */
const seen = (col, action, clientId, ms = T.event) =>
  col.waitForMatch((m) => m.action === action && m.clientId === clientId, `presence '${action}' of ${clientId}`, ms);

/** Check the fields of a received presence item (§6.1). */
function checkItem(m, { action, clientId, connectionId, data }, where) {
  assert.equal(m.action, action, `${where}: action`);
  assert.equal(m.clientId, clientId, `${where}: clientId`);
  assert.equal(m.connectionId, connectionId, `${where}: connectionId is the member's connection`);
  if (data !== undefined) {
    assert.ok(sameData(m.data, data), `${where}: data ${describeData(m.data)}, expected ${describeData(data)}`);
  }
  assert.equal(typeof m.timestamp, 'number', `${where}: timestamp`);
  // Leaves the broker synthesizes may carry no id (§6.5); every other item has one.
  if (action !== 'leave') {
    assert.equal(typeof m.id, 'string', `${where}: id`);
    assert.ok(
      m.id.startsWith(`${connectionId}:`),
      `${where}: id "${m.id}" should be "<connectionId>:<msgSerial>:<index>" (§6.1, §6.5)`,
    );
  }
}

describe('presence', () => {
  const key = makeKey('conformance.root');
  const limited = { name: 'app.nopresence', secret: `nopres${rnd(8)}` };
  limited.full = `${limited.name}:${limited.secret}`;
  const config = (grace) => `
[[keys]]
name = "${limited.name}"
secret = "${limited.secret}"
capability = '{"x:*":["subscribe"]}'

[limits]
max_message_size = ${MAX_SIZE}

[presence]
leave_grace_ms = ${grace}
`;
  let broker;
  let quick;
  before(async () => {
    [broker, quick] = await Promise.all([
      startBroker({ keys: [key.full], config: config(GRACE), label: 'presence' }),
      startBroker({ keys: [key.full], config: config(QUICK_GRACE), label: 'presence-quick' }),
    ]);
  });
  after(async () => {
    await Promise.all([broker?.stop(), quick?.stop()]);
  });

  /** A client identified by a JWT with x-ably-clientId. */
  const jwtClient = (ctx, format, clientId, { port } = {}) =>
    ctx.realtime(format, { token: mintJwt({ key, clientId }) }, { label: `${clientId}-${format.name}`, port });

  /**
   * alice (JWT clientId) and bob (key + clientId option) attached to `name`, each with a
   * presence subscription collecting every event; nobody entered yet.
   */
  async function aliceAndBob(ctx, format, name) {
    const alice = jwtClient(ctx, format, 'alice');
    const bob = ctx.realtime(format, { key: key.full, clientId: 'bob' }, { label: `bob-${format.name}` });
    const chA = alice.channels.get(name);
    const chB = bob.channels.get(name);
    const evA = collector('presence events');
    const evB = collector('presence events');
    await Promise.all([chA.presence.subscribe(evA.listener), chB.presence.subscribe(evB.listener)]);
    assert.equal(alice.auth.clientId, 'alice', 'clientId from the JWT');
    assert.equal(bob.auth.clientId, 'bob', 'clientId from ClientOptions with a key');
    return { alice, bob, chA, chB, evA, evB };
  }

  for (const format of FORMATS) {
    test(`[${format.name}] two clients enter and see each other by event and by get()`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('pres-enter');
      const { alice, bob, chA, chB, evA, evB } = await aliceAndBob(ctx, format, name);
      const aliceData = { mood: 'curious', list: [1, 'two', null] };
      const bobData = Buffer.from([0, 1, 2, 0x7f, 0x80, 0xfe, 0xff]);
      await withTimeout(chA.presence.enter(aliceData), T.event, 'ACK of alice enter');
      await withTimeout(chB.presence.enter(bobData), T.event, 'ACK of bob enter');

      checkItem(await seen(evB, 'enter', 'alice'), { action: 'enter', clientId: 'alice', connectionId: alice.connection.id, data: aliceData }, 'bob sees alice enter');
      checkItem(await seen(evA, 'enter', 'bob'), { action: 'enter', clientId: 'bob', connectionId: bob.connection.id, data: bobData }, 'alice sees bob enter');
      // The originator always gets its own event (RTP17a, §6.3 step 3).
      await seen(evA, 'enter', 'alice');
      await seen(evB, 'enter', 'bob');

      const [getA, getB] = await Promise.all([
        withTimeout(chA.presence.get(), T.event, 'alice presence.get()'),
        withTimeout(chB.presence.get(), T.event, 'bob presence.get()'),
      ]);
      assert.deepEqual(ids(getA), ['alice', 'bob'], 'alice get()');
      assert.deepEqual(ids(getB), ['alice', 'bob'], 'bob get()');
      checkItem(getA.find((m) => m.clientId === 'bob'), { action: 'present', clientId: 'bob', connectionId: bob.connection.id, data: bobData }, 'alice get() → bob');
      checkItem(getB.find((m) => m.clientId === 'alice'), { action: 'present', clientId: 'alice', connectionId: alice.connection.id, data: aliceData }, 'bob get() → alice');

      // A third client attaching now gets the members by SYNC (HAS_PRESENCE, §6.4).
      const carol = jwtClient(ctx, format, 'carol');
      const got = await withTimeout(carol.channels.get(name).presence.get(), T.event, 'late attacher get()');
      assert.deepEqual(ids(got), ['alice', 'bob'], 'late attacher get()');
      checkItem(got.find((m) => m.clientId === 'bob'), { action: 'present', clientId: 'bob', connectionId: bob.connection.id, data: bobData }, 'late attacher → bob');
      assert.deepEqual(evs(evA.messages), ['enter:alice', 'enter:bob'], 'alice saw exactly two enters');
      assert.deepEqual(evs(evB.messages), ['enter:alice', 'enter:bob'], 'bob saw exactly two enters');
    }));

    test(`[${format.name}] update() reaches the other member with the new data`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('pres-update');
      const { alice, chA, chB, evA, evB } = await aliceAndBob(ctx, format, name);
      await withTimeout(chA.presence.enter('first'), T.event, 'alice enter');
      await withTimeout(chB.presence.enter('bob here'), T.event, 'bob enter');
      await seen(evB, 'enter', 'alice');

      const next = { status: 'away', since: 42, bytes: 'héllo ✓' };
      await withTimeout(chA.presence.update(next), T.event, 'ACK of alice update');
      checkItem(await seen(evB, 'update', 'alice'), { action: 'update', clientId: 'alice', connectionId: alice.connection.id, data: next }, 'bob sees alice update');
      await seen(evA, 'update', 'alice'); // own echo
      const got = await withTimeout(chB.presence.get(), T.event, 'bob get()');
      checkItem(got.find((m) => m.clientId === 'alice'), { action: 'present', clientId: 'alice', connectionId: alice.connection.id, data: next }, 'bob get() → alice after update');

      // Binary data in an update, then back to a string.
      const bin = Uint8Array.from([9, 8, 7, 0, 255]);
      await withTimeout(chA.presence.update(bin), T.event, 'binary update');
      checkItem((await evB.waitFor(4)).at(-1), { action: 'update', clientId: 'alice', connectionId: alice.connection.id, data: bin }, 'binary update');
      assert.deepEqual(evs(evB.messages), ['enter:alice', 'enter:bob', 'update:alice', 'update:alice']);
    }));

    test(`[${format.name}] close(), detach() and leave() give an immediate leave`, withCtx(() => broker, async (ctx) => {
      // "Immediate" is shown by order, not time: after the leaver is gone, a newcomer
      // enters; the watcher must see the leave first. A leave that waited for the
      // grace period (GRACE ms) would come after the newcomer's enter.
      const name = uniqueChannel('pres-leave');
      const { alice, chA, chB, evB } = await aliceAndBob(ctx, format, name);
      await withTimeout(chA.presence.enter('a'), T.event, 'alice enter');
      await withTimeout(chB.presence.enter('b'), T.event, 'bob enter');
      await seen(evB, 'enter', 'alice');
      await seen(evB, 'enter', 'bob'); // own echo; it may follow the ACK
      const aliceId = alice.connection.id;

      // close()
      let mark = evB.messages.length;
      const closed = nextEvent(alice.connection, 'closed');
      alice.close();
      await closed;
      const carol = jwtClient(ctx, format, 'carol');
      const chC = carol.channels.get(name);
      await withTimeout(chC.presence.enter('c'), T.event, 'carol enter');
      await seen(evB, 'enter', 'carol');
      assert.deepEqual(evs(evB.messages.slice(mark)), ['leave:alice', 'enter:carol'], 'leave on close() arrives before a later enter');
      checkItem(evB.messages[mark], { action: 'leave', clientId: 'alice', connectionId: aliceId }, 'leave on close');

      // detach()
      mark = evB.messages.length;
      const carolId = carol.connection.id;
      await withTimeout(chC.detach(), T.event, 'carol detach');
      const dave = jwtClient(ctx, format, 'dave');
      const chD = dave.channels.get(name);
      await withTimeout(chD.presence.enter('d'), T.event, 'dave enter');
      await seen(evB, 'enter', 'dave');
      assert.deepEqual(evs(evB.messages.slice(mark)), ['leave:carol', 'enter:dave'], 'leave on detach() arrives before a later enter');
      checkItem(evB.messages[mark], { action: 'leave', clientId: 'carol', connectionId: carolId }, 'leave on detach');

      // explicit leave(data)
      mark = evB.messages.length;
      await withTimeout(chD.presence.leave({ bye: true }), T.event, 'ACK of dave leave');
      const left = await seen(evB, 'leave', 'dave');
      checkItem(left, { action: 'leave', clientId: 'dave', connectionId: dave.connection.id, data: { bye: true } }, 'explicit leave');
      assert.deepEqual(evs(evB.messages.slice(mark)), ['leave:dave']);

      const got = await withTimeout(chB.presence.get(), T.event, 'bob get()');
      assert.deepEqual(ids(got), ['bob'], 'only bob remains');
    }));

    test(`[${format.name}] a dropped connection that does not come back leaves after the grace period`, withCtx(() => quick, async (ctx) => {
      const name = uniqueChannel('pres-drop');
      const proxy = await ctx.proxy();
      const dropper = jwtClient(ctx, format, 'dropper', { port: proxy.port });
      const watcher = ctx.realtime(format, { key: key.full }, { label: `watcher-${format.name}` });
      const chW = watcher.channels.get(name);
      const ev = collector('presence events');
      await chW.presence.subscribe(ev.listener);
      await withTimeout(dropper.channels.get(name).presence.enter('here'), T.event, 'dropper enter');
      await seen(ev, 'enter', 'dropper');
      const dropperId = dropper.connection.id;

      // Cut the TCP connection and hold every reconnect: the client never gets back.
      const disconnected = nextEvent(dropper.connection, 'disconnected');
      proxy.hold();
      ctx.note(`cut ${proxy.cutAll()} proxied connection(s); reconnects held`);
      await disconnected;

      const left = await seen(ev, 'leave', 'dropper', T.event + QUICK_GRACE);
      checkItem(left, { action: 'leave', clientId: 'dropper', connectionId: dropperId }, 'leave after the grace period');
      assert.notEqual(dropper.connection.state, 'connected', 'the dropped client did not come back');
      assert.deepEqual(evs(ev.messages), ['enter:dropper', 'leave:dropper']);
      const got = await withTimeout(chW.presence.get(), T.event, 'watcher get()');
      assert.deepEqual(ids(got), [], 'no members left');
      const rest = ctx.rest(format, { key: key.full });
      const page = await withTimeout(rest.channels.get(name).presence.get(), T.event, 'REST presence.get()');
      assert.deepEqual(ids(page.items), [], 'REST presence is empty too');
    }));

    test(`[${format.name}] a client that resumes within the grace period causes no presence event`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('pres-resume');
      const proxyA = await ctx.proxy();
      const proxyB = await ctx.proxy();
      const sentPresence = []; // PRESENCE frames alice sends (from her frame log)
      const alice = ctx.realtime(format, { token: mintJwt({ key, clientId: 'alice' }) }, {
        label: `alice-${format.name}`,
        port: proxyA.port,
        onLog: (line) => {
          if (/Protocol\.send\(\): sending msg; \[ProtocolMessage; action=PRESENCE/.test(line)) sentPresence.push(line);
        },
      });
      const bob = jwtClient(ctx, format, 'bob', { port: proxyB.port });
      const watcher = ctx.realtime(format, { key: key.full }, { label: `watcher-${format.name}` });
      const chW = watcher.channels.get(name);
      const ev = collector('presence events');
      await chW.presence.subscribe(ev.listener);
      const chA = alice.channels.get(name);
      const evA = collector('presence events');
      await chA.presence.subscribe(evA.listener);
      await withTimeout(chA.presence.enter({ who: 'alice' }), T.event, 'alice enter');
      await withTimeout(bob.channels.get(name).presence.enter('bob'), T.event, 'bob enter');
      await seen(ev, 'enter', 'alice');
      await seen(ev, 'enter', 'bob');
      // ably-js records its own members (for the automatic re-enter) from the echo, which
      // may arrive after the ACK: wait for it before the cut.
      await seen(evA, 'enter', 'alice');
      const mark = ev.messages.length;
      const sentMark = sentPresence.length;
      const aliceId = alice.connection.id;
      const aliceEnterId = ev.messages.find((m) => m.clientId === 'alice').id;
      const channelUpdates = [];
      chA.on('update', (c) => channelUpdates.push(c));

      // alice: cut, reconnects held until she is certainly disconnected, then released.
      const disconnected = nextEvent(alice.connection, 'disconnected');
      const reattached = new Promise((resolve) => chA.once('attaching', () => chA.once('attached', resolve)));
      proxyA.hold();
      proxyA.cutAll();
      await disconnected;
      const connected = nextEvent(alice.connection, 'connected', T.event * 2, 'alice reconnect');
      proxyA.release();
      const change = await connected;
      assert.equal(alice.connection.id, aliceId, 'connection.id unchanged: the connection was resumed (§4.6)');
      assert.equal(change.reason, undefined, `resume without error; got ${change.reason?.code} ${change.reason?.message}`);
      const att = await withTimeout(reattached, T.event, 'alice channel re-attach');
      ctx.note(`alice re-attached: resumed=${att.resumed}`);
      // The automatic re-enter (§6.7) was sent before 'attached' was emitted; ACKs come
      // in msgSerial order, so once this publish is ACKed the re-enter has been answered.
      await withTimeout(chA.publish('probe', 'after resume'), T.event, 'ACK of a publish after resume');
      assert.deepEqual(channelUpdates.map((c) => c.reason?.code), [], 'no 91004 (re-enter refused) update on alice’s channel');
      // The automatic re-enter did go to the broker, with the member's original id (RTP17g1).
      const reenters = sentPresence.slice(sentMark);
      ctx.note(`PRESENCE sent by alice after the cut: ${reenters.join(' | ')}`);
      assert.equal(reenters.length, 1, 'alice re-entered automatically once after the resume');
      assert.ok(reenters[0].includes(`id=${aliceEnterId};`), `the re-enter carries the original id ${aliceEnterId}`);

      // bob: dropped after alice resumed, never back. His leave comes GRACE ms after his
      // cut, i.e. after alice's grace period would have ended: a wrong leave (or enter)
      // for alice would have reached the watcher before it.
      const bobLeft = seen(ev, 'leave', 'bob', T.event + GRACE);
      proxyB.hold();
      proxyB.cutAll();
      await bobLeft;
      assert.deepEqual(
        evs(ev.messages.slice(mark)),
        ['leave:bob'],
        'the watcher saw nothing for alice (resumed within the grace period) and a leave for bob',
      );
      const got = await withTimeout(chW.presence.get(), T.event, 'watcher get()');
      assert.deepEqual(ids(got), ['alice']);
      const a = got[0];
      checkItem(a, { action: 'present', clientId: 'alice', connectionId: aliceId, data: { who: 'alice' } }, 'alice still present');
      assert.equal(a.id, aliceEnterId, 'alice’s member is the original enter');
      const own = await withTimeout(chA.presence.get(), T.event, 'alice get()');
      assert.ok(own.some((m) => m.clientId === 'alice' && m.connectionId === aliceId), 'alice sees herself present after resume');
    }));

    test(`[${format.name}] 1,000 members entered with enterClient are all returned to a new attacher`, withCtx(() => broker, async (ctx) => {
      const N = 1000;
      const name = uniqueChannel('pres-many');
      const cid = (i) => `member-${String(i).padStart(4, '0')}`;
      const owner = ctx.realtime(format, { key: key.full }, { label: `owner-${format.name}` });
      const watcher = ctx.realtime(format, { key: key.full }, { label: `watcher-${format.name}` });
      const ev = collector('presence events');
      await watcher.channels.get(name).presence.subscribe(ev.listener);
      const chO = owner.channels.get(name);
      await chO.attach();
      await withTimeout(
        Promise.all(Array.from({ length: N }, (_, i) => chO.presence.enterClient(cid(i), { i }))),
        T.bulk,
        `ACKs of ${N} enterClient calls`,
      );
      await ev.waitFor(N, T.bulk);
      assert.equal(ev.messages.length, N);
      assert.ok(ev.messages.every((m) => m.action === 'enter'), 'the watcher saw only enters');

      // A new attacher: ATTACHED with HAS_PRESENCE, then SYNC pages (§6.4). Count them
      // from the frame log.
      const pages = [];
      const re = new RegExp(`received on .*action=SYNC; channel=${name}(?:; channelSerial=([^;\\]]*))?`);
      const late = ctx.realtime(format, { key: key.full }, {
        label: `late-${format.name}`,
        onLog: (line) => {
          const m = re.exec(line);
          if (m) pages.push(m[1]);
        },
      });
      const got = await withTimeout(late.channels.get(name).presence.get(), T.bulk, 'late attacher get()');
      assert.equal(got.length, N, `get() returned ${got.length} members`);
      assert.deepEqual(ids(got), Array.from({ length: N }, (_, i) => cid(i)));
      for (const m of got) {
        const i = Number(m.clientId.slice(7));
        assert.equal(m.action, 'present');
        assert.equal(m.connectionId, owner.connection.id);
        assert.deepEqual(m.data, { i });
      }
      ctx.note(`SYNC channelSerials: ${JSON.stringify(pages)}`);
      assert.equal(pages.length, N / 100, `SYNC pages of 100 members (sync_page_size default); got ${pages.length}`);
      const syncIds = new Set(pages.map((s) => /^([\w-]+):/.exec(s ?? '')?.[1]));
      assert.equal(syncIds.size, 1, 'one syncId for the whole sequence');
      assert.ok(!syncIds.has(undefined), 'every channelSerial is "<syncId>:<cursor>" with syncId in [\\w-]+');
      assert.ok(pages.slice(0, -1).every((s) => s.split(':')[1] !== ''), 'cursor non-empty on all but the last page');
      assert.ok(pages.at(-1).endsWith(':'), 'the last page has an empty cursor');

      // The same set over REST, paginated with Link headers.
      const rest = ctx.rest(format, { key: key.full });
      let page = await withTimeout(rest.channels.get(name).presence.get({ limit: 300 }), T.event, 'REST presence.get()');
      const restItems = [...page.items];
      const sizes = [page.items.length];
      while (page.hasNext()) {
        page = await withTimeout(page.next(), T.event, 'REST presence next()');
        restItems.push(...page.items);
        sizes.push(page.items.length);
      }
      assert.deepEqual(sizes, [300, 300, 300, 100], 'REST presence pages with limit 300');
      assert.deepEqual(ids(restItems), Array.from({ length: N }, (_, i) => cid(i)), 'REST presence members');
    }));

    test(`[${format.name}] enterClient/updateClient/leaveClient on a wildcard-token connection`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('pres-wild');
      const wild = jwtClient(ctx, format, '*');
      const watcher = ctx.realtime(format, { key: key.full }, { label: `watcher-${format.name}` });
      const ev = collector('presence events');
      await watcher.channels.get(name).presence.subscribe(ev.listener);
      await connectionState(wild, 'connected');
      assert.equal(wild.auth.clientId, '*', 'wildcard clientId reported in connectionDetails');
      const ch = wild.channels.get(name);
      await withTimeout(ch.presence.enterClient('w1', 'one'), T.event, 'enterClient w1');
      await withTimeout(ch.presence.enterClient('w2', 'two'), T.event, 'enterClient w2');
      await withTimeout(ch.presence.updateClient('w1', 'uno'), T.event, 'updateClient w1');
      await withTimeout(ch.presence.leaveClient('w2', 'bye'), T.event, 'leaveClient w2');
      await seen(ev, 'leave', 'w2');
      assert.deepEqual(evs(ev.messages), ['enter:w1', 'enter:w2', 'update:w1', 'leave:w2']);
      checkItem(ev.messages[2], { action: 'update', clientId: 'w1', connectionId: wild.connection.id, data: 'uno' }, 'updateClient');
      const got = await withTimeout(watcher.channels.get(name).presence.get(), T.event, 'watcher get()');
      assert.deepEqual(ids(got), ['w1']);
      // ably-js refuses a plain enter() on a wildcard connection itself (§6.2).
      const err = await rejectionOf(ch.presence.enter('x'), 'enter() on a wildcard connection');
      assert.equal(err.code, 40012, `${err.code} ${err.message}`);
    }));

    test(`[${format.name}] REST presence, presence history and channel status agree with what happened`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('pres-rest');
      const alice = jwtClient(ctx, format, 'alice');
      const bob = jwtClient(ctx, format, 'bob');
      const carol = jwtClient(ctx, format, 'carol');
      const chA = alice.channels.get(name);
      const ev = collector('presence events');
      await chA.presence.subscribe(ev.listener);
      const chB = bob.channels.get(name);
      const chC = carol.channels.get(name);
      await Promise.all([chB.attach(), chC.attach()]);

      await withTimeout(chA.presence.enter('a1'), T.event, 'alice enter');
      await withTimeout(chA.presence.update({ v: 2 }), T.event, 'alice update');
      await withTimeout(chB.presence.enter('b1'), T.event, 'bob enter');
      await withTimeout(chB.presence.leave('b-gone'), T.event, 'bob leave');
      await withTimeout(chC.presence.enter(Buffer.from('c1')), T.event, 'carol enter');
      const carolId = carol.connection.id;
      const closed = nextEvent(carol.connection, 'closed');
      carol.close();
      await closed;
      await seen(ev, 'leave', 'carol');
      const expected = ['enter:alice', 'update:alice', 'enter:bob', 'leave:bob', 'enter:carol', 'leave:carol'];
      assert.deepEqual(evs(ev.messages), expected, 'realtime events');

      const rest = ctx.rest(format, { key: key.full });
      const rch = rest.channels.get(name);
      const members = await withTimeout(rch.presence.get(), T.event, 'REST presence.get()');
      assert.deepEqual(ids(members.items), ['alice'], 'current members over REST');
      checkItem(members.items[0], { action: 'present', clientId: 'alice', connectionId: alice.connection.id, data: { v: 2 } }, 'REST member alice');
      assert.equal(members.hasNext(), false);
      const byClient = await withTimeout(rch.presence.get({ clientId: 'bob' }), T.event, 'REST get clientId=bob');
      assert.deepEqual(byClient.items, [], 'bob has left');
      const byConn = await withTimeout(rch.presence.get({ connectionId: alice.connection.id }), T.event, 'REST get connectionId');
      assert.deepEqual(ids(byConn.items), ['alice']);
      const otherConn = await withTimeout(rch.presence.get({ connectionId: bob.connection.id }), T.event, 'REST get bob connectionId');
      assert.deepEqual(otherConn.items, []);

      // Presence history: the whole sequence, both directions, with pagination.
      const fwd = await withTimeout(rch.presence.history({ direction: 'forwards' }), T.event, 'presence history forwards');
      assert.deepEqual(evs(fwd.items), expected, 'presence history forwards');
      const data = fwd.items.map((m) => m.data);
      assert.equal(data[0], 'a1');
      assert.deepEqual(data[1], { v: 2 });
      assert.equal(data[3], 'b-gone');
      assert.ok(sameData(data[4], Buffer.from('c1')), `binary data in history: ${describeData(data[4])}`);
      checkItem(fwd.items[5], { action: 'leave', clientId: 'carol', connectionId: carolId }, 'history: leave on close');
      for (const m of fwd.items.slice(0, 5)) {
        assert.ok(m.id.startsWith(`${m.connectionId}:`), `history id ${m.id}`);
      }
      const back = await withTimeout(rch.presence.history({ limit: 4 }), T.event, 'presence history backwards');
      assert.deepEqual(evs(back.items), [...expected].reverse().slice(0, 4), 'first page backwards, newest first');
      assert.equal(back.hasNext(), true);
      const back2 = await withTimeout(back.next(), T.event, 'presence history next()');
      assert.deepEqual(evs(back2.items), [...expected].reverse().slice(4), 'second page backwards');
      assert.equal(back2.hasNext(), false);
      // Realtime presence.history() goes through the same REST endpoint.
      const rt = await withTimeout(chA.presence.history({ direction: 'forwards' }), T.event, 'realtime presence.history()');
      assert.deepEqual(evs(rt.items), expected);

      // Occupancy: alice and bob attached (carol closed), one member.
      const details = await withTimeout(rch.status(), T.event, 'channel.status()');
      ctx.note(`status(): ${JSON.stringify(details)}`);
      assert.equal(details.channelId, name);
      assert.equal(details.status?.isActive, true);
      assert.deepEqual(details.status?.occupancy?.metrics, {
        connections: 2,
        presenceConnections: 2,
        presenceMembers: 1,
        presenceSubscribers: 2,
        publishers: 2,
        subscribers: 2,
      });
    }));

    test(`[${format.name}] refusals: no presence capability 40160, foreign clientId 40012, oversize data 40009`, withCtx(() => broker, async (ctx) => {
      const name = `x:${uniqueChannel('pres-refuse')}`;
      const watcher = ctx.realtime(format, { key: key.full }, { label: `watcher-${format.name}` });
      const ev = collector('presence events');
      const chW = watcher.channels.get(name);
      await chW.presence.subscribe(ev.listener);

      // Every refusal must come from the broker as a NACK (§7.3), not from ably-js.
      const nacks = [];
      const onLog = (line) => {
        if (/received on .*action=NACK/.test(line)) nacks.push(Number(/code=(\d+)/.exec(line)?.[1]));
      };

      // 1. A key whose capability lacks `presence` (config file [[keys]]).
      const noPres = ctx.realtime(format, { key: limited.full, clientId: 'nopres' }, { label: `nopres-${format.name}`, onLog });
      const chN = noPres.channels.get(name);
      await withTimeout(chN.attach(), T.event, 'attach with subscribe-only key');
      assert.ok(!(chN.modes ?? []).includes('presence'), `no presence mode; got ${JSON.stringify(chN.modes)}`);
      let err = await rejectionOf(chN.presence.enter('hi'), 'enter() without presence capability');
      assert.equal(err.code, 40160, `enter(): ${err.code} ${err.message}`);
      assert.equal(err.statusCode, 401);
      err = await rejectionOf(chN.presence.enterClient('someone', 'hi'), 'enterClient() without presence capability');
      assert.equal(err.code, 40160, `enterClient(): ${err.code} ${err.message}`);
      assert.equal(chN.state, 'attached', 'a NACK leaves the channel attached');
      assert.equal(noPres.connection.state, 'connected');

      // 2. An identified connection entering as someone else. ably-js does not check
      // this itself; the broker NACKs it.
      const alice = ctx.realtime(format, { token: mintJwt({ key, clientId: 'alice' }) }, { label: `alice-${format.name}`, onLog });
      const chA = alice.channels.get(name);
      await chA.attach();
      err = await rejectionOf(chA.presence.enterClient('mallory', 'spoof'), "enterClient('mallory') on alice's connection");
      ctx.note(`enterClient(mallory) on alice: ${err.code} ${err.statusCode} ${err.message}`);
      assert.equal(err.code, 40012, `mismatched clientId: ${err.code} ${err.message}`);
      assert.equal(err.statusCode, 400);

      // 3. Presence data over maxMessageSize (ably-js checks publish sizes, not presence).
      err = await rejectionOf(chA.presence.enter('x'.repeat(MAX_SIZE + 1)), 'oversize enter()');
      assert.equal(err.code, 40009, `oversize string: ${err.code} ${err.message}`);
      assert.equal(err.statusCode, 400);
      err = await rejectionOf(chA.presence.enter(Buffer.alloc(MAX_SIZE + 1, 7)), 'oversize binary enter()');
      assert.equal(err.code, 40009, `oversize binary: ${err.code} ${err.message}`);
      assert.equal(alice.connection.state, 'connected');
      assert.equal(chA.state, 'attached');
      assert.deepEqual(nacks, [40160, 40160, 40012, 40009, 40009], 'NACK frames received, with their error codes');

      // The connection still works; the watcher saw only the accepted enter.
      await withTimeout(chA.presence.enter('x'.repeat(MAX_SIZE / 2)), T.event, 'enter() within the limit');
      await seen(ev, 'enter', 'alice');
      assert.deepEqual(evs(ev.messages), ['enter:alice'], 'no event for any refused operation');
      const got = await withTimeout(chW.presence.get(), T.event, 'watcher get()');
      assert.deepEqual(ids(got), ['alice']);
    }));
  }
});
