// Capabilities (ably-protocol.md §5.7, §7.3, §8.7, §8.8, §12(a) steps 6-7).
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
  uniqueChannel,
  collector,
  withTimeout,
} from '../lib/helpers.js';

async function expectRejection(promise, code, what) {
  let err;
  try {
    await withTimeout(promise, T.event, what);
  } catch (e) {
    err = e;
  }
  assert.ok(err, `${what}: expected a rejection with ${code}, but it succeeded`);
  assert.ok(!String(err.message).startsWith('safety timeout'), `${what}: ${err.message}`);
  assert.equal(err.code, code, `${what}: rejected with ${err.code} ${err.message}`);
  return err;
}

describe('capabilities', () => {
  const full = makeKey('conformance.root');
  const limited = { name: 'app.limited', secret: `limited${rnd(8)}` };
  limited.full = `${limited.name}:${limited.secret}`;
  const config = `
[[keys]]
name = "${limited.name}"
secret = "${limited.secret}"
capability = '{"allowed:*":["publish","subscribe","history"]}'

[limits]
max_message_size = 65536
`;
  let broker;
  before(async () => {
    broker = await startBroker({ keys: [full.full], config, label: 'capability' });
  });
  after(async () => {
    await broker?.stop();
  });

  for (const format of FORMATS) {
    test(`[${format.name}] limited key: attach to 'forbidden' fails the channel with 40160`, withCtx(() => broker, async (ctx) => {
      const client = ctx.realtime(format, { key: limited.full });
      await connectionState(client, 'connected');
      const ch = client.channels.get('forbidden');
      await expectRejection(ch.attach(), 40160, 'attach(forbidden)');
      assert.equal(ch.state, 'failed', 'channel goes failed on ERROR{channel} (§5.7)');
      assert.equal(ch.errorReason?.code, 40160);
      assert.equal(ch.errorReason?.statusCode, 401);
      assert.equal(client.connection.state, 'connected', 'a channel error is not a connection error');

      // The connection remains usable for permitted channels.
      const ok = client.channels.get(uniqueChannel('allowed:after'));
      await ok.attach();
      assert.equal(ok.state, 'attached');
    }));

    test(`[${format.name}] limited key: publish to 'forbidden' without attaching is NACKed 40160`, withCtx(() => broker, async (ctx) => {
      const client = ctx.realtime(format, { key: limited.full });
      await connectionState(client, 'connected');
      const ch = client.channels.get('forbidden');
      const err = await expectRejection(ch.publish('nope', 'data'), 40160, 'publish(forbidden)');
      assert.equal(err.statusCode, 401);
      assert.equal(ch.state, 'initialized', 'publishing did not attach the channel');
      assert.equal(client.connection.state, 'connected');

      // Later publishes on an allowed channel on the same connection still get ACKed
      // (ACK/NACK in msgSerial order, §7.3).
      await withTimeout(client.channels.get(uniqueChannel('allowed:p')).publish('yes', 'data'), T.event, 'allowed publish ACK');
    }));

    test(`[${format.name}] limited key: 'allowed:x' attach, publish, subscribe and history work`, withCtx(() => broker, async (ctx) => {
      const name = `allowed:x-${rnd(4)}`;
      const client = ctx.realtime(format, { key: limited.full });
      const ch = client.channels.get(name);
      const col = collector();
      await ch.subscribe(col.listener);
      assert.equal(ch.state, 'attached');
      await ch.publish('one', 'first');
      await ch.publish('two', { second: true });
      const got = await col.waitFor(2, T.event);
      assert.deepEqual(got.map((m) => m.name), ['one', 'two']);
      const page = await withTimeout(ch.history({ direction: 'forwards' }), T.event, 'history');
      assert.deepEqual(page.items.map((m) => m.name), ['one', 'two']);
      // §8.8: publish → PUBLISH, subscribe → SUBSCRIBE + PRESENCE_SUBSCRIBE; no presence.
      assert.deepEqual(
        [...(ch.modes ?? [])].sort(),
        ['presence_subscribe', 'publish', 'subscribe'],
        `ATTACHED modes for capability [publish, subscribe, history]; got ${JSON.stringify(ch.modes)}`,
      );
    }));

    test(`[${format.name}] limited key over REST: forbidden history/publish → 40160, allowed works`, withCtx(() => broker, async (ctx) => {
      const rest = ctx.rest(format, { key: limited.full });
      await expectRejection(rest.channels.get('forbidden').history(), 40160, 'REST history(forbidden)');
      await expectRejection(rest.channels.get('forbidden').publish('x', 'y'), 40160, 'REST publish(forbidden)');
      const name = `allowed:rest-${rnd(4)}`;
      await withTimeout(rest.channels.get(name).publish('r', 'ok'), T.event, 'REST publish(allowed)');
      const page = await withTimeout(rest.channels.get(name).history(), T.event, 'REST history(allowed)');
      assert.deepEqual(page.items.map((m) => m.name), ['r']);
    }));

    test(`[${format.name}] JWT capability limits the connection (subscribe-only)`, withCtx(() => broker, async (ctx) => {
      const token = mintJwt({ key: full, clientId: 'reader', capability: { 'ro:*': ['subscribe'] } });
      const client = ctx.realtime(format, { token });
      await connectionState(client, 'connected');
      const ch = client.channels.get(uniqueChannel('ro:news'));
      await ch.attach();
      assert.deepEqual(
        [...(ch.modes ?? [])].sort(),
        ['presence_subscribe', 'subscribe'],
        `modes for a subscribe-only JWT; got ${JSON.stringify(ch.modes)}`,
      );
      await expectRejection(ch.publish('x', 'y'), 40160, 'publish with a subscribe-only JWT');
      await expectRejection(client.channels.get('elsewhere').attach(), 40160, 'attach outside the JWT capability');
    }));
  }
});
