// REST publish and history (ably-protocol.md §8.1, §8.2, §9.1, §9.2, §12(c)).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  makeKey,
  mintJwt,
  startBroker,
  withCtx,
  uniqueChannel,
  payload,
  sameData,
  describeData,
  withTimeout,
  allHistory,
} from '../lib/helpers.js';

function checkItems(items, expected, label) {
  assert.deepEqual(
    items.map((m) => m.name),
    expected.map(([n]) => n),
    `${label}: names/order`,
  );
  items.forEach((m, i) => {
    const want = expected[i][1];
    assert.ok(sameData(m.data, want), `${label} ${m.name}: got ${describeData(m.data)}, expected ${describeData(want)}`);
    assert.ok(!m.encoding, `${label} ${m.name}: encoding left after decode: ${m.encoding}`);
  });
}

describe('REST', () => {
  const key = makeKey('conformance.root');
  let broker;
  before(async () => {
    broker = await startBroker({ keys: [key.full], label: 'rest' });
  });
  after(async () => {
    await broker?.stop();
  });

  for (const format of FORMATS) {
    const other = FORMATS.find((f) => f !== format);

    test(`[${format.name}] REST publish resolves and history shows realtime and REST messages`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('rest');
      const rt = ctx.realtime(format, { key: key.full });
      const rest = ctx.rest(format, { key: key.full });

      const rtEntries = [0, 1, 2, 3, 4].map((i) => [`rt-${i}`, payload(i)]);
      const rtCh = rt.channels.get(name);
      for (const [n, d] of rtEntries) await withTimeout(rtCh.publish(n, d), T.event, `realtime publish ${n}`);

      const restEntries = [5, 6, 7, 8, 9].map((i) => [`rest-${i}`, payload(i)]);
      const restCh = rest.channels.get(name);
      // single-message publishes …
      for (const [n, d] of restEntries.slice(0, 3)) {
        await withTimeout(restCh.publish(n, d), T.event, `REST publish ${n}`);
      }
      // … and one multi-message publish (the body is always an array, §9.2)
      await withTimeout(
        restCh.publish(restEntries.slice(3).map(([n, d]) => ({ name: n, data: d }))),
        T.event,
        'REST batch publish',
      );
      const all = [...rtEntries, ...restEntries];

      const fwd = await allHistory(restCh, { direction: 'forwards' });
      checkItems(fwd.items, all, `REST ${format.name} history forwards`);
      const back = await allHistory(restCh, {});
      checkItems(back.items, [...all].reverse(), `REST ${format.name} history (default backwards)`);
      for (const m of fwd.items) {
        assert.equal(typeof m.serial, 'string', `${m.name}: serial`);
        assert.equal(typeof m.timestamp, 'number', `${m.name}: timestamp`);
      }
      fwd.items.slice(0, 5).forEach((m) => assert.equal(m.connectionId, rt.connection.id, `${m.name}: connectionId`));

      // Realtime history sees the REST publishes too.
      const rtHist = await allHistory(rtCh, { direction: 'forwards' });
      checkItems(rtHist.items, all, 'realtime history forwards');

      // A client of the other format reads the same bytes (binary re-encoded, §7.5/§9.2).
      const rest2 = ctx.rest(other, { key: key.full });
      const h2 = await allHistory(rest2.channels.get(name), { direction: 'forwards' });
      checkItems(h2.items, all, `REST ${other.name} history of ${format.name}-published messages`);

      // Pagination over REST with a small limit.
      const paged = await allHistory(restCh, { direction: 'forwards', limit: 4 });
      assert.deepEqual(paged.pageSizes, [4, 4, 2], 'REST pages of limit 4 over 10 messages');
      checkItems(paged.items, all, 'REST paged history');
    }));

    test(`[${format.name}] REST publish result and unknown channel history`, withCtx(() => broker, async (ctx) => {
      const rest = ctx.rest(format, { key: key.full });
      const ch = rest.channels.get(uniqueChannel('rest-result'));
      const res = await withTimeout(ch.publish('one', 'x'), T.event, 'REST publish');
      // §9.1: 201 with a body; ably-js returns {serials}.
      if (res?.serials) assert.equal(res.serials.length, 1);
      const page = await withTimeout(ch.history(), T.event, 'history');
      assert.equal(page.items.length, 1);
      if (res?.serials?.[0]) assert.equal(page.items[0].serial, res.serials[0], 'publish serial = history serial');

      const empty = await withTimeout(rest.channels.get(uniqueChannel('never-used')).history(), T.event, 'empty history');
      assert.deepEqual(empty.items, [], 'unknown channel → 200 with [] (§9.2)');

      const time = await withTimeout(rest.time(), T.event, 'GET /time');
      assert.equal(typeof time, 'number');
    }));

    test(`[${format.name}] REST with a JWT (Bearer) publishes; wrong key is rejected`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('rest-jwt');
      const rest = ctx.rest(format, { token: mintJwt({ key, clientId: 'rest-user' }) });
      await withTimeout(rest.channels.get(name).publish('jwt', 'bearer'), T.event, 'REST publish with JWT');
      const page = await withTimeout(rest.channels.get(name).history(), T.event, 'history with JWT');
      assert.deepEqual(page.items.map((m) => m.name), ['jwt']);
      assert.equal(page.items[0].clientId, 'rest-user', 'clientId from the JWT is applied');

      const bad = ctx.rest(format, { key: `${key.name}:wrongsecret` });
      let err;
      try {
        await withTimeout(bad.channels.get(name).history(), T.event, 'history with a bad key');
      } catch (e) {
        err = e;
      }
      assert.ok(err, 'bad key must be rejected');
      assert.equal(err.code, 40101, `bad key → 40101; got ${err.code} ${err.message}`);
      assert.equal(err.statusCode, 401);
    }));
  }
});
