// Connection resume after a dropped TCP connection
// (ably-protocol.md §4.5, §4.6, §5.5, §5.6, §7.1 msgSerial, §12(e)).
//
// The subscriber reaches the broker through a TCP proxy owned by the test; the
// proxy destroys both sides of every connection it carries ("cut"), which looks to
// ably-js like a network failure. The publisher connects directly.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  makeKey,
  startBroker,
  withCtx,
  connectionState,
  nextEvent,
  uniqueChannel,
  collector,
  publishAll,
  withTimeout,
  allHistory,
} from '../lib/helpers.js';

const seq = (i) => `n-${String(i).padStart(4, '0')}`;

describe('resume', () => {
  const key = makeKey('conformance.root');
  let broker;
  before(async () => {
    broker = await startBroker({ keys: [key.full], label: 'resume' });
  });
  after(async () => {
    await broker?.stop();
  });

  for (const format of FORMATS) {
    test(`[${format.name}] after a cut the subscriber resumes: same connection id, every message exactly once, in order`, withCtx(() => broker, async (ctx) => {
      const TOTAL = 300;
      const name = uniqueChannel('resume');
      const proxy = await ctx.proxy();
      const sub = ctx.realtime(format, { key: key.full }, { label: `sub-${format.name}`, port: proxy.port });
      const pub = ctx.realtime(format, { key: key.full }, { label: `pub-${format.name}` });
      await Promise.all([connectionState(sub, 'connected'), connectionState(pub, 'connected')]);
      const idBefore = sub.connection.id;

      const subCh = sub.channels.get(name);
      const col = collector();
      await subCh.subscribe(col.listener);
      const pubCh = pub.channels.get(name);

      // Events that follow the cut, registered before it.
      const disconnected = nextEvent(sub.connection, 'disconnected', T.event, "subscriber 'disconnected' after the cut");
      const reattached = new Promise((resolve) => {
        subCh.on('attaching', () => subCh.once('attached', resolve));
      });
      const updates = [];
      subCh.on('update', (c) => updates.push(c));

      // Phase 1: 0..99 published; the cut happens when the subscriber has received
      // 50, i.e. while later ones are still in flight. New connections are held so
      // the subscriber is certainly offline during phase 2.
      let cutDone = false;
      col.onCount(50, () => {
        proxy.hold();
        const n = proxy.cutAll();
        cutDone = true;
        ctx.note(`cut ${n} proxied connection(s) after the subscriber had 50 messages`);
      });
      const phase1 = Array.from({ length: 100 }, (_, i) => [seq(i), { i }]);
      await publishAll(pubCh, phase1, 20);
      const dc = await disconnected;
      assert.ok(cutDone, 'the cut happened');
      ctx.note(`subscriber disconnected: ${dc.reason?.code} ${dc.reason?.message}`);

      // Phase 2: published while the subscriber cannot reach the broker.
      const phase2 = Array.from({ length: 100 }, (_, i) => [seq(100 + i), { i: 100 + i }]);
      await publishAll(pubCh, phase2, 20);
      assert.notEqual(sub.connection.state, 'connected', 'subscriber is offline during phase 2');

      // Let it reconnect through the proxy.
      const connected = nextEvent(sub.connection, 'connected', T.event * 2, 'subscriber reconnect');
      proxy.release();
      const change = await connected;
      assert.equal(sub.connection.id, idBefore, 'connection.id unchanged → resume succeeded (§4.6)');
      assert.equal(
        change.reason,
        undefined,
        `a successful resume carries no error; got ${change.reason?.code} ${change.reason?.message}`,
      );
      const attached = await withTimeout(reattached, T.event, 'channel re-attach after resume');

      // Phase 3: live again.
      const phase3 = Array.from({ length: TOTAL - 200 }, (_, i) => [seq(200 + i), { i: 200 + i }]);
      await publishAll(pubCh, phase3, 20);
      await pubCh.publish('end', 'sentinel');

      const got = await col.waitForName('end', T.bulk);
      const names = got.map((m) => m.name);
      const expected = [...phase1, ...phase2, ...phase3].map(([n]) => n).concat('end');
      if (names.length !== expected.length || names.some((n, i) => n !== expected[i])) {
        const seen = new Map();
        names.forEach((n) => seen.set(n, (seen.get(n) ?? 0) + 1));
        const dup = [...seen].filter(([, c]) => c > 1).map(([n]) => n);
        const missing = expected.filter((n) => !seen.has(n));
        const firstBad = names.findIndex((n, i) => n !== expected[i]);
        assert.fail(
          `delivery not exactly-once-in-order: ${names.length} received; duplicates ${JSON.stringify(dup.slice(0, 10))}` +
            ` (${dup.length}); missing ${JSON.stringify(missing.slice(0, 10))} (${missing.length});` +
            ` first divergence at #${firstBad}: got ${names[firstBad]}, expected ${expected[firstBad]}`,
        );
      }
      got.forEach((m, i) => {
        if (i < TOTAL) assert.deepEqual(m.data, { i }, `${m.name} data`);
      });
      assert.equal(attached.resumed, true, 'ATTACHED after resume has the RESUMED flag (§5.6)');
      assert.equal(updates.length, 0, `no 'update' (continuity loss) events expected; got ${updates.length}`);
      assert.ok(proxy.stats.accepted >= 2, 'the subscriber reconnected through the proxy');
    }));

    test(`[${format.name}] a publish whose ACK was lost is re-sent on resume and published once`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('dedupe');
      const proxy = await ctx.proxy();
      const publisher = ctx.realtime(format, { key: key.full }, { label: `proxied-pub-${format.name}`, port: proxy.port });
      const observer = ctx.realtime(format, { key: key.full }, { label: `observer-${format.name}` });
      await Promise.all([connectionState(publisher, 'connected'), connectionState(observer, 'connected')]);
      const idBefore = publisher.connection.id;
      const col = collector();
      await observer.channels.get(name).subscribe(col.listener);

      // Lose everything broker→publisher: the MESSAGE reaches the broker (the
      // observer gets it) but the ACK never arrives.
      proxy.dropDownstream(true);
      const pubCh = publisher.channels.get(name);
      let acked = false;
      const probe = pubCh.publish('probe', 'once').then(() => {
        acked = true;
      });
      probe.catch(() => {}); // awaited below; avoid an unhandled rejection if the test fails first
      await col.waitFor(1, T.event);
      assert.equal(acked, false, 'ACK was swallowed by the proxy');

      // Cut; the client resumes and re-sends the pending MESSAGE with its msgSerial.
      proxy.dropDownstream(false);
      const connected = nextEvent(publisher.connection, 'connected', T.event * 2, 'publisher reconnect');
      proxy.cutAll();
      await connected;
      assert.equal(publisher.connection.id, idBefore, 'resume kept the connection id');
      await withTimeout(probe, T.event, 'ACK of the re-sent probe');

      await withTimeout(pubCh.publish('after', 'next'), T.event, 'ACK of the next publish');
      const got = await col.waitForName('after', T.event);
      assert.deepEqual(
        got.map((m) => m.name),
        ['probe', 'after'],
        'the re-sent message must be de-duplicated by (connectionId, msgSerial) (§4.6, §7.3)',
      );
      const { items } = await allHistory(observer.channels.get(name), { direction: 'forwards' });
      assert.deepEqual(items.map((m) => m.name), ['probe', 'after'], 'history holds the probe exactly once');
    }));
  }
});
