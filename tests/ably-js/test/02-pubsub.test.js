// Attach, publish with ACK, fan-out and payload encodings
// (ably-protocol.md §5.1, §5.2, §7.1-§7.5, §12(a) steps 6-7).
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
  publishAll,
  sameData,
  describeData,
} from '../lib/helpers.js';

const N = 1000;

function checkDecoded(msg, expected, where) {
  assert.ok(
    sameData(msg.data, expected),
    `${where}: data mismatch: got ${describeData(msg.data)}, expected ${describeData(expected)}`,
  );
  // Fully decoded: no encoding step left over (an unknown/partial encoding stays here).
  assert.ok(!msg.encoding, `${where}: encoding left after decode: ${msg.encoding}`);
}

describe('publish and subscribe', () => {
  const key = makeKey('conformance.root');
  let broker;
  before(async () => {
    broker = await startBroker({ keys: [key.full], label: 'pubsub' });
  });
  after(async () => {
    await broker?.stop();
  });

  for (const format of FORMATS) {
    test(`[${format.name}] attach reports channel modes from ATTACHED flags`, withCtx(() => broker, async (ctx) => {
      const client = ctx.realtime(format, { key: key.full });
      const ch = client.channels.get(uniqueChannel('modes'));
      const change = await ch.attach();
      assert.equal(ch.state, 'attached');
      assert.equal(change?.resumed ?? false, false, 'a first attach is not resumed');
      // §5.2: always set the mode bits; a full-capability key gets at least the basic four.
      for (const mode of ['publish', 'subscribe', 'presence', 'presence_subscribe']) {
        assert.ok(ch.modes?.includes(mode), `mode ${mode} missing from ATTACHED flags; modes=${JSON.stringify(ch.modes)}`);
      }
      // Re-ATTACH of an attached channel must be answered (§5.1): setOptions with new params.
      await ch.setOptions({ params: { someUnknownParam: 'x' } });
      assert.equal(ch.state, 'attached');
      await ch.detach();
      assert.equal(ch.state, 'detached');
    }));

    test(`[${format.name}] ${N} mixed messages arrive complete, in order and byte-exact`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('bulk');
      const sub = ctx.realtime(format, { key: key.full }, { label: `sub-${format.name}` });
      const pub = ctx.realtime(format, { key: key.full }, { label: `pub-${format.name}` });
      await Promise.all([connectionState(sub, 'connected'), connectionState(pub, 'connected')]);

      const subCh = sub.channels.get(name);
      const col = collector();
      await subCh.subscribe(col.listener); // implicit attach
      assert.equal(subCh.state, 'attached');

      const entries = Array.from({ length: N }, (_, i) => [`m-${String(i).padStart(4, '0')}`, payload(i)]);
      const pubCh = pub.channels.get(name);
      const results = await publishAll(pubCh, entries, 100); // every publish() resolved = ACKed
      assert.equal(results.length, N);

      // A sentinel published last: delivery is ordered, so once it is in, all are.
      await pubCh.publish('end', 'sentinel');
      const got = await col.waitForName('end', T.bulk);
      if (got.length !== N + 1) {
        const names = new Set(got.map((m) => m.name));
        const missing = entries.filter(([n]) => !names.has(n)).map(([n]) => n);
        assert.fail(`expected ${N} messages then 'end', got ${got.length}; missing ${missing.length}: ${JSON.stringify(missing.slice(0, 10))}`);
      }
      const pubConnId = pub.connection.id;
      const ids = new Set();
      const serials = new Set();
      for (let i = 0; i < N; i++) {
        const msg = got[i];
        assert.equal(msg.name, entries[i][0], `message #${i} out of order (got ${msg.name})`);
        checkDecoded(msg, entries[i][1], `message ${msg.name}`);
        assert.equal(msg.connectionId, pubConnId, `${msg.name}: connectionId is the publisher's`);
        assert.equal(typeof msg.timestamp, 'number', `${msg.name}: timestamp`);
        assert.equal(typeof msg.id, 'string', `${msg.name}: id`);
        ids.add(msg.id);
        assert.equal(typeof msg.serial, 'string', `${msg.name}: serial (contract: messages carry serial)`);
        serials.add(msg.serial);
      }
      assert.equal(ids.size, N, 'message ids are unique');
      assert.equal(serials.size, N, 'message serials are unique');

      // If the broker returns ACK res (§7.3), each publish result names the serial
      // subscribers saw.
      if (results.some((r) => r?.serials)) {
        for (let i = 0; i < N; i++) {
          assert.deepEqual(results[i]?.serials, [got[i].serial], `publish result serials for ${entries[i][0]}`);
        }
      } else {
        ctx.note('ACKs carry no res/serials (publish() resolved with undefined)');
      }
    }));

    test(`[${format.name}] publisher receives its own messages (echo on by default)`, withCtx(() => broker, async (ctx) => {
      const client = ctx.realtime(format, { key: key.full });
      const ch = client.channels.get(uniqueChannel('echo'));
      const col = collector();
      await ch.subscribe(col.listener);
      await ch.publish('self', { hello: 'me' });
      const [msg] = await col.waitFor(1, T.event);
      assert.equal(msg.name, 'self');
      assert.deepEqual(msg.data, { hello: 'me' });
      assert.equal(msg.connectionId, client.connection.id);
    }));

    test(`[${format.name}] a batch publish (array of messages) is delivered in order`, withCtx(() => broker, async (ctx) => {
      const sub = ctx.realtime(format, { key: key.full });
      const pub = ctx.realtime(format, { key: key.full });
      const name = uniqueChannel('batch');
      const col = collector();
      await sub.channels.get(name).subscribe(col.listener);
      const batch = Array.from({ length: 10 }, (_, i) => ({ name: `b-${i}`, data: payload(i) }));
      const result = await pub.channels.get(name).publish(batch);
      const got = await col.waitForName('b-9', T.event);
      assert.deepEqual(got.map((m) => m.name), batch.map((m) => m.name));
      got.forEach((m, i) => checkDecoded(m, batch[i].data, m.name));
      if (result?.serials) assert.equal(result.serials.length, 10, 'one serial per message in ACK res');
    }));
  }

  // Cross-format: the broker must re-encode binary between msgpack `bin` and
  // JSON base64 (§7.5), both ways.
  for (const [from, to] of [
    [FORMATS[0], FORMATS[1]],
    [FORMATS[1], FORMATS[0]],
  ]) {
    test(`[${from.name}→${to.name}] binary published by a ${from.name} client arrives as identical bytes`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('xfmt');
      const pub = ctx.realtime(from, { key: key.full }, { label: `pub-${from.name}` });
      const sub = ctx.realtime(to, { key: key.full }, { label: `sub-${to.name}` });
      const col = collector();
      await sub.channels.get(name).subscribe(col.listener);

      const all = Buffer.alloc(256);
      for (let i = 0; i < 256; i++) all[i] = i;
      const big = Buffer.alloc(20000);
      for (let i = 0; i < big.length; i++) big[i] = (i * 131 + 17) & 0xff;
      const cases = [
        ['all-bytes', all],
        ['single-zero', Buffer.from([0])],
        ['utf8-looking-bytes', Buffer.from('looks like text', 'utf8')], // must stay binary
        ['invalid-utf8', Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1])],
        ['uint8array', new Uint8Array([1, 2, 3, 250, 251, 252])],
        ['big', big],
        ['string', 'plain string ✓'],
        ['json', { a: [1, 2, { b: 'c' }] }],
      ];
      const pubCh = pub.channels.get(name);
      for (const [n, d] of cases) await pubCh.publish(n, d);
      const got = await col.waitForName(cases.at(-1)[0], T.event);
      assert.deepEqual(got.map((m) => m.name), cases.map((c) => c[0]));
      got.forEach((m, i) => {
        const expected = cases[i][1];
        if (expected instanceof Uint8Array) {
          assert.ok(m.data instanceof Uint8Array, `${m.name}: arrived as ${describeData(m.data)}, expected binary`);
        }
        checkDecoded(m, expected, `${from.name}→${to.name} ${m.name}`);
      });
    }));
  }
});
