// The Rust client SDK and ably-js on one broker: payloads cross between them intact in every
// pairing of wire formats (ably-protocol.md §7.1, §7.5).
//
// The Rust side is the `interop` example (client-sdk/examples/interop.rs, path from
// RUST_INTEROP_BIN): it mirrors channel IN onto channel OUT, republishing each message with
// its name and data, or with --publish-binary publishes one binary message and exits.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  RUST_INTEROP_BIN,
  makeKey,
  startBroker,
  withCtx,
  uniqueChannel,
  collector,
  sameData,
  describeData,
  withTimeout,
} from '../lib/helpers.js';

/** The Rust SDK's wire formats (its --format). */
const SDK_FORMATS = ['msgpack', 'json'];

/** What ably-js publishes on IN: text, a JSON object, bytes (not valid UTF-8, full range). */
const PAYLOADS = [
  ['text', 'héllo ✓ 日本語 "quoted" \\ slash {"not":"json"}'],
  ['object', { a: [1, 'two', null, true, 2.5], nested: { empty: {}, list: [] }, s: 'ü' }],
  ['bytes', Buffer.from([0, 1, 0x7f, 0x80, 0xc3, 0x28, 0xfe, 0xff, 0x22, 0x5c])],
];

describe('Rust SDK interop', () => {
  const key = makeKey('conformance.root');
  let broker;
  before(async () => {
    broker = await startBroker({ keys: [key.full], label: 'rust-interop' });
  });
  after(async () => {
    await broker?.stop();
  });

  const interopArgs = (sdkFormat, extra) => [
    '--endpoint', `http://127.0.0.1:${broker.port}`,
    '--key', key.full,
    '--format', sdkFormat,
    ...extra,
  ];

  for (const sdkFormat of SDK_FORMATS) {
    for (const format of FORMATS) {
      const pairing = `[rust ${sdkFormat} ↔ ably-js ${format.name}]`;

      test(`${pairing} text, a JSON object and a Buffer come back intact from the Rust client`, withCtx(() => broker, async (ctx) => {
        const inName = uniqueChannel('interop-in');
        const outName = uniqueChannel('interop-out');
        const client = ctx.realtime(format, { key: key.full });
        const col = collector();
        await client.channels.get(outName).subscribe(col.listener);

        const rust = ctx.spawn(RUST_INTEROP_BIN, interopArgs(sdkFormat, ['--in', inName, '--out', outName]), {
          label: `interop-${sdkFormat}`,
        });
        await rust.waitForLine((line) => line === 'ready', { what: '`ready`' });

        const inCh = client.channels.get(inName);
        for (const [name, data] of PAYLOADS) await inCh.publish(name, data);

        const got = await col.waitFor(PAYLOADS.length, T.event);
        assert.deepEqual(got.map((m) => m.name), PAYLOADS.map(([name]) => name), 'names, in order');
        for (const [i, [name, data]] of PAYLOADS.entries()) {
          const msg = got[i];
          assert.ok(
            sameData(msg.data, data),
            `${name}: got ${describeData(msg.data)}, expected ${describeData(data)}`,
          );
          assert.ok(!msg.encoding, `${name}: encoding left after decode: ${msg.encoding}`);
          if (data instanceof Uint8Array) assert.ok(Buffer.isBuffer(msg.data), `${name}: a Buffer`);
          else assert.deepEqual(msg.data, data, `${name}: deep-equal`);
        }

        rust.signal('SIGINT');
        const { code } = await exitOf(rust);
        assert.equal(code, 0, 'the Rust client closes cleanly on SIGINT');
        assert.equal(got.length, PAYLOADS.length, 'nothing extra was republished');
      }));

      test(`${pairing} bytes published by the Rust client reach ably-js exactly`, withCtx(() => broker, async (ctx) => {
        const outName = uniqueChannel('interop-bin');
        const client = ctx.realtime(format, { key: key.full });
        const col = collector();
        await client.channels.get(outName).subscribe(col.listener);

        const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => (i * 7 + 3) & 0xff));
        const rust = ctx.spawn(
          RUST_INTEROP_BIN,
          interopArgs(sdkFormat, ['--out', outName, '--publish-binary', bytes.toString('hex')]),
          { label: `interop-publish-${sdkFormat}` },
        );
        const [msg] = await col.waitFor(1, T.event);
        assert.equal(msg.name, 'binary');
        assert.ok(Buffer.isBuffer(msg.data), `a Buffer, got ${describeData(msg.data)}`);
        assert.ok(msg.data.equals(bytes), `got ${describeData(msg.data)}, expected ${describeData(bytes)}`);
        assert.ok(!msg.encoding, `encoding left after decode: ${msg.encoding}`);
        const { code } = await exitOf(rust);
        assert.equal(code, 0, 'exits with 0 after the ACK');
        assert.ok(rust.lines.includes('published'), 'prints `published` after the ACK');
      }));
    }
  }
});

/** The program's exit ({ code, signal }), within the safety timeout. */
const exitOf = (proc) => withTimeout(proc.exited, T.event, `exit of ${proc.label}`);
