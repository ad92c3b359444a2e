// Durability across SIGKILL: an ACKed publish is on disk
// (ably-protocol.md §7.3 ACK, §5.5 channel log, §9.2 history).
//
// Each format gets its own broker process on its own data dir. After SIGKILL the
// broker is restarted on the same data dir (new port) and history is read back.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  makeKey,
  makeTempDir,
  removeDir,
  startBroker,
  withCtx,
  connectionState,
  nextOneOf,
  nextEvent,
  uniqueChannel,
  collector,
  withTimeout,
  payload,
  publishAll,
  sameData,
  describeData,
  allHistory,
} from '../lib/helpers.js';

const idx = (i) => `d-${String(i).padStart(4, '0')}`;
const parseIdx = (name) => Number(/^d-(\d+)$/.exec(name)?.[1] ?? NaN);

describe('durability (SIGKILL)', () => {
  const key = makeKey('conformance.root');
  const dirs = [];
  const brokers = [];
  after(async () => {
    for (const b of brokers) await b.stop({ keepData: true }).catch(() => {});
    for (const d of dirs) await removeDir(d);
  });

  for (const format of FORMATS) {
    // The broker changes mid-test, so the Ctx's broker is swapped by hand.
    let current;
    test(`[${format.name}] every ACKed message survives SIGKILL exactly once and in order`, withCtx(() => current, async (ctx) => {
      const dataDir = await makeTempDir('ably-conformance-durable-');
      dirs.push(dataDir);
      current = await startBroker({ keys: [key.full], dataDir, label: `durable-${format.name}-1` });
      brokers.push(current);
      ctx.broker = current;
      const name = uniqueChannel('durable');
      const ACKED_FIRST = 200;
      const IN_FLIGHT = 300;

      const pub = ctx.realtime(format, { key: key.full }, { label: `pub-${format.name}` });
      await connectionState(pub, 'connected');
      const ch = pub.channels.get(name);

      // 1. 200 messages, every ACK awaited.
      const first = Array.from({ length: ACKED_FIRST }, (_, i) => [idx(i), payload(i)]);
      await publishAll(ch, first, 50);

      // 2. 300 more pipelined; SIGKILL once 50 of them are ACKed (others in flight).
      const acked = new Set(first.map(([n]) => n));
      const killed = current;
      ctx.note(`first broker (killed) log: ${killed.logPath}`);
      let killRequested = false;
      const second = Array.from({ length: IN_FLIGHT }, (_, k) => [idx(ACKED_FIRST + k), payload(ACKED_FIRST + k)]);
      let ackedSecond = 0;
      const pending = second.map(([n, d]) =>
        ch.publish(n, d).then(
          () => {
            acked.add(n);
            ackedSecond++;
            if (ackedSecond === 50 && !killRequested) {
              killRequested = true;
              killed.child.kill('SIGKILL');
            }
          },
          () => {},
        ),
      );
      const gone = pub.connection.state === 'connected'
        ? nextOneOf(pub.connection, ['disconnected', 'suspended', 'failed'], T.bulk, 'publisher losing the killed broker')
        : Promise.resolve();
      const exit = await killed.exited;
      assert.ok(killRequested, 'SIGKILL was sent after 50 in-flight ACKs');
      assert.equal(exit.signal, 'SIGKILL', `broker exited by SIGKILL (got ${JSON.stringify(exit)})`);
      await gone; // the socket is closed: no further ACK can arrive
      const ackedAtKill = new Set(acked);
      ctx.note(`ACKed before SIGKILL: ${ackedAtKill.size} of ${ACKED_FIRST + IN_FLIGHT}`);
      // Close the old client so it cannot resume into the new broker and resend.
      const closed = nextOneOf(pub.connection, ['closed', 'failed'], T.event);
      pub.close();
      await closed;
      void pending; // unACKed publishes may stay unsettled; they are not awaited

      // 3. Restart on the same data dir.
      current = await startBroker({ keys: [key.full], dataDir, label: `durable-${format.name}-2` });
      brokers.push(current);
      ctx.broker = current;
      const reader = ctx.realtime(format, { key: key.full }, { label: `reader-${format.name}` });
      await connectionState(reader, 'connected');
      const rch = reader.channels.get(name);
      const { items } = await allHistory(rch, { direction: 'forwards', limit: 100 });

      const names = items.map((m) => m.name);
      const indices = names.map(parseIdx);
      const seen = new Set();
      const dups = names.filter((n) => (seen.has(n) ? true : (seen.add(n), false)));
      assert.deepEqual(dups, [], 'no message appears twice after restart');
      for (let k = 1; k < indices.length; k++) {
        assert.ok(indices[k] > indices[k - 1], `history out of order at #${k}: ${names[k - 1]} then ${names[k]}`);
      }
      const lost = [...ackedAtKill].filter((n) => !seen.has(n)).sort();
      assert.deepEqual(lost.slice(0, 20), [], `ACKed messages lost after SIGKILL (${lost.length} in all)`);
      for (const m of items) {
        const i = parseIdx(m.name);
        assert.ok(sameData(m.data, payload(i)), `${m.name}: data after restart: ${describeData(m.data)}, expected ${describeData(payload(i))}`);
      }

      // 4. The restarted broker appends after the recovered log (no overwrite/reuse).
      const serialsBefore = new Set(items.map((m) => m.serial));
      await rch.publish('after-restart', 'new');
      const again = await allHistory(rch, { direction: 'forwards', limit: 1000 });
      assert.equal(again.items.length, items.length + 1, 'one more message after the restart publish');
      assert.equal(again.items.at(-1).name, 'after-restart', 'newest message is last');
      assert.ok(!serialsBefore.has(again.items.at(-1).serial), 'new serial is not a reused one');
      assert.deepEqual(again.items.slice(0, -1).map((m) => m.name), names, 'recovered messages unchanged');
    }));

    // §4.6 failed resume (RTN15c7): a connection key from before the crash is unknown
    // to the restarted broker, which must answer CONNECTED with a new connectionId and
    // an error; the client then re-attaches its channels (§5.6 case 2 or 1) and works.
    test(`[${format.name}] after a crash and restart, a client's resume fails cleanly and its channel works again`, withCtx(() => current, async (ctx) => {
      const dataDir = await makeTempDir('ably-conformance-crash-');
      dirs.push(dataDir);
      current = await startBroker({ keys: [key.full], dataDir, label: `crash-${format.name}-1` });
      brokers.push(current);
      ctx.broker = current;
      const name = uniqueChannel('crash');
      const proxy = await ctx.proxy(current.port);
      const sub = ctx.realtime(format, { key: key.full }, { label: `sub-${format.name}`, port: proxy.port });
      await connectionState(sub, 'connected');
      const oldId = sub.connection.id;
      const subCh = sub.channels.get(name);
      const col = collector();
      await subCh.subscribe(col.listener);
      const pub1 = ctx.realtime(format, { key: key.full }, { label: `pub1-${format.name}` });
      await pub1.channels.get(name).publish('before-crash', 'a');
      await col.waitForName('before-crash', T.event);

      // Crash; reconnect attempts are held by the proxy until the new broker is up.
      proxy.hold();
      const disconnected = nextEvent(sub.connection, 'disconnected', T.event, "subscriber 'disconnected' after SIGKILL");
      const killed = current;
      ctx.note(`first broker (killed) log: ${killed.logPath}`);
      await killed.kill();
      await disconnected;
      pub1.close();

      current = await startBroker({ keys: [key.full], dataDir, label: `crash-${format.name}-2` });
      brokers.push(current);
      ctx.broker = current;
      const connected = nextEvent(sub.connection, 'connected', T.event * 2, 'subscriber reconnect to the restarted broker');
      const reattached = new Promise((resolve) => subCh.once('attached', resolve));
      proxy.retarget(current.port);
      proxy.release();
      const change = await connected;
      assert.notEqual(sub.connection.id, oldId, 'the restarted broker cannot resume: a new connectionId');
      assert.ok(change.reason, 'CONNECTED after a failed resume carries an error (§4.6, e.g. 80008)');
      ctx.note(`failed-resume reason: ${change.reason?.code} ${change.reason?.message}`);
      await withTimeout(reattached, T.event, 'channel re-attach on the restarted broker');

      const pub2 = ctx.realtime(format, { key: key.full }, { label: `pub2-${format.name}` });
      await withTimeout(pub2.channels.get(name).publish('after-restart', 'b'), T.event, 'publish on the restarted broker');
      const got = await col.waitForName('after-restart', T.event);
      assert.deepEqual(got.map((m) => m.name), ['before-crash', 'after-restart'], 'no duplicate or lost delivery');
      const { items } = await allHistory(pub2.channels.get(name), { direction: 'forwards' });
      assert.deepEqual(items.map((m) => m.name), ['before-crash', 'after-restart']);
    }));
  }
});

