// History pagination and rewind
// (ably-protocol.md §5.4 rewind, §9.1 pagination/Link headers, §9.2, §12(c)).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  makeKey,
  startBroker,
  withCtx,
  connectionState,
  uniqueChannel,
  collector,
  payload,
  sameData,
  describeData,
  withTimeout,
  publishAll,
} from '../lib/helpers.js';

const pad = (i) => `h-${String(i).padStart(2, '0')}`;

describe('history and rewind', () => {
  const key = makeKey('conformance.root');
  let broker;
  before(async () => {
    broker = await startBroker({ keys: [key.full], label: 'history' });
  });
  after(async () => {
    await broker?.stop();
  });

  for (const format of FORMATS) {
    test(`[${format.name}] history paginates 25 messages with limit 10 in both directions`, withCtx(() => broker, async (ctx) => {
      const client = ctx.realtime(format, { key: key.full });
      await connectionState(client, 'connected');
      const ch = client.channels.get(uniqueChannel('hist'));
      const entries = Array.from({ length: 25 }, (_, i) => [pad(i), payload(i)]);
      const results = await publishAll(ch, entries, 25);

      const check = (items, indices, label) => {
        assert.deepEqual(
          items.map((m) => m.name),
          indices.map(pad),
          `${label}: names/order`,
        );
        items.forEach((m, k) => {
          const expected = entries[indices[k]][1];
          assert.ok(
            sameData(m.data, expected),
            `${label} ${m.name}: got ${describeData(m.data)}, expected ${describeData(expected)}`,
          );
          assert.ok(!m.encoding, `${label} ${m.name}: encoding left after decode: ${m.encoding}`);
          assert.equal(typeof m.serial, 'string', `${label} ${m.name}: serial`);
          assert.equal(typeof m.timestamp, 'number', `${label} ${m.name}: timestamp`);
          assert.equal(m.connectionId, client.connection.id, `${label} ${m.name}: connectionId`);
        });
      };
      const range = (a, b) => (a <= b ? Array.from({ length: b - a + 1 }, (_, k) => a + k) : Array.from({ length: a - b + 1 }, (_, k) => a - k));

      // backwards (newest first): 24..15, 14..5, 4..0
      let page = await withTimeout(ch.history({ direction: 'backwards', limit: 10 }), T.event, 'history page 1');
      check(page.items, range(24, 15), 'backwards page 1');
      assert.equal(page.hasNext(), true, 'backwards page 1 hasNext');
      assert.equal(page.isLast(), false);
      page = await withTimeout(page.next(), T.event, 'history page 2');
      check(page.items, range(14, 5), 'backwards page 2');
      assert.equal(page.hasNext(), true, 'backwards page 2 hasNext');
      page = await withTimeout(page.next(), T.event, 'history page 3');
      check(page.items, range(4, 0), 'backwards page 3');
      assert.equal(page.hasNext(), false, 'backwards page 3 is the last (no rel="next")');
      assert.equal(page.isLast(), true);
      const forwardSerials = [];

      // forwards (oldest first): 0..9, 10..19, 20..24
      page = await withTimeout(ch.history({ direction: 'forwards', limit: 10 }), T.event, 'forwards page 1');
      check(page.items, range(0, 9), 'forwards page 1');
      forwardSerials.push(...page.items.map((m) => m.serial));
      assert.equal(page.hasNext(), true);
      page = await withTimeout(page.next(), T.event, 'forwards page 2');
      check(page.items, range(10, 19), 'forwards page 2');
      forwardSerials.push(...page.items.map((m) => m.serial));
      assert.equal(page.hasNext(), true);
      page = await withTimeout(page.next(), T.event, 'forwards page 3');
      check(page.items, range(20, 24), 'forwards page 3');
      forwardSerials.push(...page.items.map((m) => m.serial));
      assert.equal(page.hasNext(), false);
      assert.equal(new Set(forwardSerials).size, 25, 'serials are unique');

      // Default: backwards, limit 100 → one page of all 25, newest first.
      page = await withTimeout(ch.history(), T.event, 'default history');
      check(page.items, range(24, 0), 'default history');
      assert.equal(page.hasNext(), false);

      if (results.some((r) => r?.serials)) {
        assert.deepEqual(
          results.map((r) => r?.serials?.[0]),
          forwardSerials,
          'ACK res serials equal history serials',
        );
      }
    }));

    test(`[${format.name}] history of a channel with no messages is empty`, withCtx(() => broker, async (ctx) => {
      const client = ctx.realtime(format, { key: key.full });
      const page = await withTimeout(client.channels.get(uniqueChannel('empty')).history(), T.event, 'history');
      assert.deepEqual(page.items, []);
      assert.equal(page.hasNext(), false);
    }));

    test(`[${format.name}] rewind=3 delivers the last 3 messages in order before live ones`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('rewind');
      const pub = ctx.realtime(format, { key: key.full }, { label: 'pub' });
      const pubCh = pub.channels.get(name);
      const entries = Array.from({ length: 5 }, (_, i) => [`r-${i}`, payload(i)]);
      for (const [n, d] of entries) await pubCh.publish(n, d);

      const sub = ctx.realtime(format, { key: key.full }, { label: 'sub' });
      const subCh = sub.channels.get(name, { params: { rewind: '3' } });
      const col = collector();
      let attachedChange;
      subCh.once('attached', (c) => (attachedChange = c));
      await subCh.subscribe(col.listener);
      assert.equal(subCh.state, 'attached');

      // The live message is published only after the subscriber is attached.
      await pubCh.publish('live', 'after attach');
      const got = await col.waitForName('live', T.event);
      assert.deepEqual(
        got.map((m) => m.name),
        ['r-2', 'r-3', 'r-4', 'live'],
        'rewound messages first, in order, then the live one',
      );
      got.slice(0, 3).forEach((m, k) => {
        assert.ok(sameData(m.data, entries[k + 2][1]), `${m.name}: got ${describeData(m.data)}`);
        assert.equal(m.connectionId, pub.connection.id, `${m.name}: original connectionId kept`);
      });
      // §5.4: ATTACHED sets HAS_BACKLOG when rewind messages follow.
      assert.equal(attachedChange?.hasBacklog, true, 'ATTACHED carries HAS_BACKLOG for a rewind with messages');
    }));

    test(`[${format.name}] rewind larger than the channel delivers what exists (no error)`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('rewind-short');
      const pub = ctx.realtime(format, { key: key.full });
      const pubCh = pub.channels.get(name);
      await pubCh.publish('only-1', 'a');
      await pubCh.publish('only-2', 'b');
      const sub = ctx.realtime(format, { key: key.full });
      const subCh = sub.channels.get(name, { params: { rewind: '10' } });
      const col = collector();
      await subCh.subscribe(col.listener);
      await pubCh.publish('live', 'c');
      const got = await col.waitForName('live', T.event);
      assert.deepEqual(got.map((m) => m.name), ['only-1', 'only-2', 'live']);
      assert.equal(subCh.errorReason ?? null, null, 'no channel error');
    }));
  }
});
