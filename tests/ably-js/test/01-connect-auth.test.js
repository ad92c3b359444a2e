// Connection and auth (ably-protocol.md §1, §4.2, §4.3, §8.1, §8.2, §12(a) steps 3-4, §12(d)).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  makeKey,
  mintJwt,
  startBroker,
  withCtx,
  connectionState,
  nextEvent,
  nextOneOf,
  uniqueChannel,
  collector,
  rnd,
} from '../lib/helpers.js';

describe('connect and authenticate', () => {
  const key = makeKey('conformance.root');
  let broker;
  before(async () => {
    broker = await startBroker({ keys: [key.full], label: 'connect' });
  });
  after(async () => {
    await broker?.stop();
  });

  for (const format of FORMATS) {
    test(`[${format.name}] connects with a basic key (CONNECTED with id and key)`, withCtx(() => broker, async (ctx) => {
      const client = ctx.realtime(format, { key: key.full });
      const change = await nextEvent(client.connection, 'connected');
      assert.equal(change.reason, undefined, 'CONNECTED on a fresh connection carries no error');
      const { id, key: connKey } = client.connection;
      assert.equal(typeof id, 'string');
      assert.ok(id.length > 0, 'connectionId is non-empty');
      assert.ok(!id.includes(':'), `connectionId must not contain ':' (§4.3), got ${id}`);
      assert.equal(typeof connKey, 'string');
      assert.ok(connKey.length > 0, 'connectionDetails.connectionKey is non-empty');
      // An anonymous basic-auth connection has no clientId (§8.1).
      assert.ok(
        client.auth.clientId === undefined || client.auth.clientId === null,
        `anonymous key connection should have no clientId, got ${client.auth.clientId}`,
      );

      // A second connection gets a different id and key (§4.3: always a fresh key).
      const other = ctx.realtime(format, { key: key.full });
      await connectionState(other, 'connected');
      assert.notEqual(other.connection.id, id, 'second connection has a distinct connectionId');
      assert.notEqual(other.connection.key, connKey, 'second connection has a distinct connectionKey');

      // ping(): HEARTBEAT with id must be echoed (§3.1, §4.4).
      const rtt = await client.connection.ping();
      assert.equal(typeof rtt, 'number');
    }));

    test(`[${format.name}] wrong key secret fails the connection with 40101`, withCtx(() => broker, async (ctx) => {
      const client = ctx.realtime(format, { key: `${key.name}:wrongsecret${rnd(4)}` });
      const change = await nextOneOf(client.connection, ['connected', 'failed', 'disconnected']);
      assert.equal(change.current, 'failed', `expected failed, got ${change.current}`);
      assert.equal(change.reason?.code, 40101, `reason code (${change.reason?.message})`);
      assert.equal(change.reason?.statusCode, 401);
    }));

    test(`[${format.name}] connects with an Ably JWT given as token; clientId comes from the JWT`, withCtx(() => broker, async (ctx) => {
      const clientId = `alice-${rnd(3)}`;
      const token = mintJwt({ key, clientId });
      const client = ctx.realtime(format, { token });
      const change = await nextEvent(client.connection, 'connected');
      assert.equal(change.reason, undefined);
      assert.equal(client.auth.clientId, clientId, 'connectionDetails.clientId → auth.clientId (§4.3)');

      // The identified clientId is applied to published messages (§7.2).
      const ch = client.channels.get(uniqueChannel('jwt'));
      const col = collector();
      await ch.subscribe(col.listener);
      await ch.publish('hello', 'from alice');
      const [msg] = await col.waitFor(1, T.event);
      assert.equal(msg.clientId, clientId, 'message clientId is the JWT clientId');
      assert.equal(msg.connectionId, client.connection.id);
    }));

    test(`[${format.name}] connects with an Ably JWT from authCallback`, withCtx(() => broker, async (ctx) => {
      const clientId = `bob-${rnd(3)}`;
      let calls = 0;
      const client = ctx.realtime(format, {
        authCallback: (_params, cb) => {
          calls++;
          cb(null, mintJwt({ key, clientId }));
        },
      });
      await connectionState(client, 'connected');
      assert.equal(calls, 1, 'authCallback called exactly once');
      assert.equal(client.auth.clientId, clientId);
    }));

    test(`[${format.name}] JWT without clientId connects anonymously`, withCtx(() => broker, async (ctx) => {
      const client = ctx.realtime(format, { token: mintJwt({ key }) });
      await connectionState(client, 'connected');
      assert.ok(
        client.auth.clientId === undefined || client.auth.clientId === null,
        `expected no clientId, got ${client.auth.clientId}`,
      );
    }));

    // §4.2/§12(d) step 2: the broker answers ERROR {code:40142,statusCode:401} (or
    // DISCONNECTED with it) and closes. ably-js treats 4014x during connect as
    // renewable: the connection goes `disconnected` with that reason, fetches a new
    // token from authCallback and retries later; it must never become `connected`.
    // (With a literal `token` option the client would fail with its own 40171 "no way
    // to renew" instead, hiding the broker's code, so authCallback is used.)
    test(`[${format.name}] expired JWT fails the connection with 40142`, withCtx(() => broker, async (ctx) => {
      const now = Math.floor(Date.now() / 1000);
      let calls = 0;
      const client = ctx.realtime(format, {
        authCallback: (_params, cb) => {
          calls++;
          cb(null, mintJwt({ key, clientId: 'late', iat: now - 7200, exp: now - 3600 }));
        },
      });
      const change = await nextOneOf(client.connection, ['connected', 'disconnected', 'failed'], T.event);
      assert.notEqual(change.current, 'connected', 'an expired JWT must not connect');
      assert.equal(change.reason?.code, 40142, `reason: ${change.reason?.code} ${change.reason?.message}`);
      assert.equal(change.reason?.statusCode, 401);
      assert.ok(calls >= 1);
    }));

    test(`[${format.name}] JWT with a bad signature fails the connection with 40144`, withCtx(() => broker, async (ctx) => {
      let calls = 0;
      const client = ctx.realtime(format, {
        authCallback: (_params, cb) => {
          calls++;
          cb(null, mintJwt({ key, clientId: 'mallory', signingSecret: 'not' + key.secret }));
        },
      });
      const change = await nextOneOf(client.connection, ['connected', 'disconnected', 'failed'], T.event);
      assert.notEqual(change.current, 'connected', 'a JWT with a bad signature must not connect');
      assert.equal(change.reason?.code, 40144, `reason: ${change.reason?.code} ${change.reason?.message}`);
      assert.equal(change.reason?.statusCode, 401);
      assert.ok(calls >= 1);
    }));
  }
});
