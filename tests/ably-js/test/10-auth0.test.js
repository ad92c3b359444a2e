// Auth0 logins through the broker's auth plugin (ably-protocol.md §4.2, §4.7, §8.4, §8.5;
// shared/auth0.md §4.5 cases 30-31). A local issuer stands in for the Auth0 tenant: an
// RSA-2048 key whose JWKS is served on 127.0.0.1, RS256 access tokens with `permissions`.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  makeKey,
  rnd,
  startBroker,
  startAuth0Issuer,
  startHttpServer,
  httpJson,
  withCtx,
  withTimeout,
  connectionState,
  nextOneOf,
  deferred,
  uniqueChannel,
  collector,
  expectCode,
} from '../lib/helpers.js';

// Tokens live 45 s in the renewal tests; with a lead of 43 s the broker sends AUTH about
// 2 s after each token is issued (§4.7). Long-lived tokens (1 h) never get near it.
const RENEWAL_LEAD_MS = 43000;
const SHORT_TTL_S = 45;

// chat:* allows everything the tests do; news:* is subscribe-only; anything else is refused.
const PERMISSIONS = ['publish:chat:*', 'subscribe:chat:*', 'presence:chat:*', 'subscribe:news:*'];
const PROFILE = {
  nickname: 'alice',
  given_name: 'Alice',
  family_name: 'Liddell',
  picture: 'http://127.0.0.1/alice.png',
};

/** Record every connection state change of `client` (including 'update') as text. */
function trackConnection(client) {
  const seen = [];
  client.connection.on((change) => {
    seen.push(
      `${change.previous}->${change.current}` +
        (change.reason ? `(${change.reason.code})` : ''),
    );
  });
  return seen;
}

describe('Auth0 logins (auth plugin)', () => {
  const key = makeKey('conformance.root');
  const sub = `auth0|conformance-${rnd(6)}`;
  let issuer;
  let broker;
  let base;
  let me; // GET /api/users/me for `sub`

  before(async () => {
    issuer = await startAuth0Issuer();
    broker = await startBroker({
      keys: [key.full],
      config: issuer.config({ connection: { token_renewal_lead_ms: RENEWAL_LEAD_MS } }),
      label: 'auth0',
    });
    base = `http://127.0.0.1:${broker.port}`;
    const token = issuer.mint({ sub, permissions: PERMISSIONS, profile: PROFILE });
    const res = await httpJson(`${base}/api/users/me`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    assert.equal(res.status, 200, `GET /api/users/me: ${res.status} ${JSON.stringify(res.body)}`);
    me = res.body;
    assert.equal(typeof me.id, 'string', `users/me id: ${JSON.stringify(me)}`);
    assert.ok(me.id.length > 0, 'users/me id is non-empty');
    assert.equal(me.oauthSub, sub, 'users/me oauthSub is the token sub');
    assert.notEqual(me.id, sub, 'the internal user id is not the sub');
  });
  after(async () => {
    await broker?.stop();
    await issuer?.close();
  });

  const authTokenUrl = () => `${base}/api/auth/token`;

  for (const format of FORMATS) {
    // -----------------------------------------------------------------------------
    // 1. authUrl = the broker's /api/auth/token, with the Auth0 token in authHeaders (§8.4)
    test(`[${format.name}] authUrl /api/auth/token with Bearer Auth0 token: clientId, publish, presence, 40160 outside`, withCtx(() => broker, async (ctx) => {
      const token = issuer.mint({ sub, permissions: PERMISSIONS, profile: PROFILE });
      const exp = JSON.parse(Buffer.from(token.split('.')[1], 'base64url')).exp;

      // The endpoint itself: TokenDetails JSON for the user, by GET and by POST.
      for (const method of ['GET', 'POST']) {
        const res = await httpJson(authTokenUrl(), {
          method,
          headers: { Authorization: `Bearer ${token}` },
        });
        assert.equal(res.status, 200, `${method} /api/auth/token: ${res.status} ${JSON.stringify(res.body)}`);
        assert.match(res.headers.get('content-type') || '', /application\/json/, 'TokenDetails as JSON (§8.4)');
        const td = res.body;
        for (const field of ['token', 'keyName', 'capability', 'clientId']) {
          assert.equal(typeof td[field], 'string', `TokenDetails.${field}: ${JSON.stringify(td)}`);
        }
        assert.equal(td.clientId, me.id, 'TokenDetails.clientId is the internal user id');
        assert.equal(typeof td.issued, 'number');
        assert.equal(typeof td.expires, 'number');
        assert.ok(td.expires > Date.now(), 'broker token not yet expired');
        assert.ok(td.expires <= exp * 1000, `broker token expires with the Auth0 token (${td.expires} > ${exp * 1000})`);
        assert.ok(td.expires - td.issued <= 3600 * 1000, 'broker token lives at most 1 h');
        const cap = JSON.parse(td.capability);
        assert.ok(cap['chat:*'], `capability from permissions: ${td.capability}`);
      }
      const anon = await httpJson(authTokenUrl());
      assert.equal(anon.status, 401, `/api/auth/token without Authorization → 401, got ${anon.status}`);

      let authUrlCalls = 0;
      const client = ctx.realtime(format, {
        authUrl: authTokenUrl(),
        authHeaders: { Authorization: `Bearer ${token}` },
      }, {
        onLog: (line) => {
          if (line.includes('/api/auth/token')) authUrlCalls++;
        },
      });
      await connectionState(client, 'connected');
      ctx.note(`authUrl log lines: ${authUrlCalls}`);
      assert.equal(client.auth.clientId, me.id, 'auth.clientId is the id from /api/users/me');
      const connId = client.connection.id;

      // publish on chat:x-… (publish:chat:*, subscribe:chat:*)
      const ch = client.channels.get(uniqueChannel('chat:x'));
      const col = collector();
      await ch.subscribe(col.listener);
      await withTimeout(ch.publish('hello', { from: 'alice' }), T.event, 'publish ACK on chat:x');
      const [msg] = await col.waitFor(1, T.event);
      assert.equal(msg.clientId, me.id, 'message clientId is the user id');
      assert.equal(msg.connectionId, connId);

      // presence on the same channel (presence:chat:*)
      const pcol = collector('presence events');
      await ch.presence.subscribe(pcol.listener);
      await withTimeout(ch.presence.enter('here'), T.event, 'presence enter ACK');
      const entered = await pcol.waitForMatch(
        (p) => p.action === 'enter' && p.clientId === me.id,
        'own presence enter',
      );
      assert.equal(entered.connectionId, connId);
      assert.equal(entered.data, 'here');
      const members = await withTimeout(ch.presence.get(), T.event, 'presence.get()');
      assert.deepEqual(members.map((m) => m.clientId), [me.id]);

      // outside the permissions: attach refused, publish NACKed
      const secret = client.channels.get(uniqueChannel('secret'));
      await expectCode(secret.attach(), 40160, 'attach(secret:…)', 401);
      assert.equal(secret.state, 'failed', 'channel FAILED on ERROR{channel} (§5.7)');
      await expectCode(
        client.channels.get(uniqueChannel('other')).publish('x', 'y'),
        40160,
        'publish(other:…) without attach',
        401,
      );
      // news:* is subscribe-only: attach works, publish and presence are refused
      const news = client.channels.get(uniqueChannel('news:a'));
      await withTimeout(news.attach(), T.event, 'attach(news:…)');
      await expectCode(news.publish('x', 'y'), 40160, 'publish(news:…)', 401);
      await expectCode(news.presence.enter('no'), 40160, 'presence.enter(news:…)', 401);

      assert.equal(client.connection.state, 'connected', 'refusals are channel-level only');
      assert.equal(client.connection.id, connId);
      assert.equal(ch.state, 'attached');
    }));

    // -----------------------------------------------------------------------------
    // 2. §4.7 renewal: the broker asks (AUTH) before expiry; the client's new token keeps
    //    the same connection. Two renewals per test, so re-arming after a renewal counts.
    const renewalCases = [
      {
        name: 'authUrl (app endpoint relaying to /api/auth/token)',
        async setup(ctx, onCall) {
          // The app's own authUrl endpoint: mints a fresh Auth0 token each time (as the SPA
          // would get from Auth0) and exchanges it at the broker's /api/auth/token.
          const relay = await startHttpServer(async (req, res) => {
            const fresh = issuer.mint({ sub, permissions: PERMISSIONS, ttlSeconds: SHORT_TTL_S });
            const r = await fetch(authTokenUrl(), { headers: { Authorization: `Bearer ${fresh}` } });
            const body = await r.text();
            onCall(`authUrl → broker ${r.status}`);
            res.writeHead(r.status, { 'content-type': r.headers.get('content-type') || 'text/plain' });
            res.end(body);
          });
          ctx.cleanupExtra = () => relay.close();
          return { authUrl: `http://127.0.0.1:${relay.port}/auth` };
        },
      },
      {
        name: 'authCallback returning the raw Auth0 JWT',
        async setup(_ctx, onCall) {
          return {
            authCallback: (_params, cb) => {
              onCall('authCallback');
              cb(null, issuer.mint({ sub, permissions: PERMISSIONS, ttlSeconds: SHORT_TTL_S }));
            },
          };
        },
      },
    ];
    for (const rc of renewalCases) {
      test(`[${format.name}] token renewal via ${rc.name} keeps the connection`, withCtx(() => broker, async (ctx) => {
        const calls = [];
        const callWaiters = new Map(); // n → deferred resolved at the n-th call
        const callNumber = (n) => {
          if (!callWaiters.has(n)) callWaiters.set(n, deferred());
          if (calls.length >= n) callWaiters.get(n).resolve();
          return callWaiters.get(n).promise;
        };
        const onCall = (what) => {
          calls.push(`${new Date().toISOString().slice(11, 23)} ${what}`);
          callWaiters.get(calls.length)?.resolve();
        };
        try {
          const opts = await rc.setup(ctx, onCall);
          // Frames from the ably-js log: the broker's AUTH requests, the client's AUTH
          // replies, and the CONNECTED frames (1 + one per renewal).
          const frames = { authIn: 0, authOut: 0, connectedIn: 0 };
          const client = ctx.realtime(format, opts, {
            onLog: (line) => {
              if (line.includes('received on') && line.includes('action=AUTH')) frames.authIn++;
              if (line.includes('sending msg') && line.includes('action=AUTH')) frames.authOut++;
              if (line.includes('received on') && line.includes('action=CONNECTED')) frames.connectedIn++;
            },
          });
          const seen = trackConnection(client);
          const updates = [];
          const updateWaiters = [];
          client.connection.on('update', (change) => {
            updates.push(change);
            updateWaiters.splice(0).forEach((d) => d.resolve());
          });
          const updateNumber = (n) => {
            if (updates.length >= n) return Promise.resolve();
            const d = deferred();
            updateWaiters.push(d);
            return d.promise.then(() => updateNumber(n));
          };

          await connectionState(client, 'connected');
          const connId = client.connection.id;
          assert.equal(client.auth.clientId, me.id, 'clientId is the user id');

          const ch = client.channels.get(uniqueChannel('chat:renew'));
          const chStates = [];
          ch.on((change) => chStates.push(`${change.previous}->${change.current}`));
          const col = collector();
          await ch.subscribe(col.listener);
          await withTimeout(ch.presence.enter('before'), T.event, 'presence enter before renewal');
          await withTimeout(ch.publish('before', 'b'), T.event, 'publish before renewal');

          // The broker's AUTH → a new token from authUrl/authCallback → AUTH → CONNECTED
          // (same connection) → ably-js 'update'. Twice.
          await withTimeout(callNumber(2), T.event, 'second token request (renewal 1)');
          await withTimeout(updateNumber(1), T.event, "connection 'update' after renewal 1");
          await withTimeout(callNumber(3), T.event, 'third token request (renewal 2)');
          await withTimeout(updateNumber(2), T.event, "connection 'update' after renewal 2");
          ctx.note(`token requests: ${calls.join(' | ')}`);
          ctx.note(`connection events: ${seen.join(' | ')}; frames: ${JSON.stringify(frames)}`);

          assert.ok(frames.authIn >= 2, `broker sent AUTH (action 17) twice: ${JSON.stringify(frames)}`);
          assert.ok(frames.authOut >= 2, `client answered with AUTH twice: ${JSON.stringify(frames)}`);
          assert.ok(frames.connectedIn >= 3, `CONNECTED after each renewal: ${JSON.stringify(frames)}`);
          assert.equal(client.connection.state, 'connected');
          assert.equal(client.connection.id, connId, 'same connection.id after renewal');
          assert.equal(client.auth.clientId, me.id, 'clientId unchanged by renewal');
          for (const u of updates) {
            assert.equal(u.current, 'connected');
            assert.equal(u.reason ?? null, null, `renewal 'update' without error, got ${u.reason?.code} ${u.reason?.message}`);
          }
          assert.deepEqual(
            seen.filter((s) => !s.startsWith('connected->connected')),
            ['initialized->connecting', 'connecting->connected'],
            `no disconnect around the renewals: ${seen.join(' | ')}`,
          );

          // The channel stayed attached and still works on the renewed credentials.
          assert.equal(ch.state, 'attached');
          assert.deepEqual(chStates, ['initialized->attaching', 'attaching->attached'], `channel states: ${chStates}`);
          await withTimeout(ch.publish('after', 'a'), T.event, 'publish after renewal');
          const got = await col.waitForName('after', T.event);
          assert.deepEqual(got.map((m) => m.name), ['before', 'after']);
          assert.equal(got[1].clientId, me.id);
          assert.equal(got[1].connectionId, connId);
          const members = await withTimeout(ch.presence.get(), T.event, 'presence.get() after renewal');
          assert.deepEqual(members.map((m) => `${m.clientId}/${m.connectionId}`), [`${me.id}/${connId}`]);
        } finally {
          await ctx.cleanupExtra?.();
        }
      }));
    }

    // -----------------------------------------------------------------------------
    // 3. The Auth0 JWT itself on the WebSocket (access_token), as `token` or from authCallback
    test(`[${format.name}] Auth0 JWT as token: same clientId as via /api/auth/token`, withCtx(() => broker, async (ctx) => {
      const token = issuer.mint({ sub, permissions: PERMISSIONS, profile: PROFILE });
      const td = await httpJson(authTokenUrl(), { headers: { Authorization: `Bearer ${token}` } });
      assert.equal(td.status, 200, `/api/auth/token: ${td.status} ${JSON.stringify(td.body)}`);

      const client = ctx.realtime(format, { token });
      const change = await nextOneOf(client.connection, ['connected', 'disconnected', 'failed']);
      assert.equal(change.current, 'connected', `reason: ${change.reason?.code} ${change.reason?.message}`);
      assert.equal(client.auth.clientId, me.id, 'clientId is the user id');
      assert.equal(client.auth.clientId, td.body.clientId, 'same clientId as the /api/auth/token token');

      const ch = client.channels.get(uniqueChannel('chat:direct'));
      const col = collector();
      await ch.subscribe(col.listener);
      await withTimeout(ch.publish('direct', 'x'), T.event, 'publish ACK');
      const [msg] = await col.waitFor(1, T.event);
      assert.equal(msg.clientId, me.id);
      await expectCode(client.channels.get(uniqueChannel('secret')).attach(), 40160, 'attach(secret:…)', 401);
      assert.equal(client.connection.state, 'connected');
    }));

    test(`[${format.name}] Auth0 JWT from authCallback: same clientId, presence works`, withCtx(() => broker, async (ctx) => {
      let calls = 0;
      const client = ctx.realtime(format, {
        authCallback: (_params, cb) => {
          calls++;
          cb(null, issuer.mint({ sub, permissions: PERMISSIONS }));
        },
      });
      const change = await nextOneOf(client.connection, ['connected', 'disconnected', 'failed']);
      assert.equal(change.current, 'connected', `reason: ${change.reason?.code} ${change.reason?.message}`);
      assert.equal(calls, 1, 'authCallback called once');
      assert.equal(client.auth.clientId, me.id, 'clientId is the user id');

      const ch = client.channels.get(uniqueChannel('chat:cb'));
      const pcol = collector('presence events');
      await ch.presence.subscribe(pcol.listener);
      await withTimeout(ch.presence.enter({ cb: true }), T.event, 'presence enter');
      const p = await pcol.waitForMatch((m) => m.action === 'enter' && m.clientId === me.id, 'own enter');
      assert.deepEqual(p.data, { cb: true });
      await expectCode(
        client.channels.get(uniqueChannel('news:cb')).presence.enter('no'),
        40160,
        'presence.enter(news:…) (subscribe-only)',
        401,
      );
    }));

    // -----------------------------------------------------------------------------
    // 4. An expired Auth0 token never connects: 40142 (§4.2, §8.5). ably-js treats 4014x
    //    while connecting as renewable: it goes `disconnected` with the broker's reason and
    //    asks authCallback again at once. The callback hands out the expired token once and
    //    then errors, so the client stops there.
    test(`[${format.name}] expired Auth0 token from authCallback → 40142, never connected`, withCtx(() => broker, async (ctx) => {
      const now = Math.floor(Date.now() / 1000);
      const expired = issuer.mint({ sub, permissions: PERMISSIONS, iat: now - 7200, exp: now - 3600 });

      // The token exchange refuses it too (REST: 401 with 40142).
      const res = await httpJson(authTokenUrl(), { headers: { Authorization: `Bearer ${expired}` } });
      assert.equal(res.status, 401, `/api/auth/token with an expired token: ${res.status} ${JSON.stringify(res.body)}`);
      assert.equal(res.body?.error?.code, 40142, `error body: ${JSON.stringify(res.body)}`);

      let calls = 0;
      let callsAtChange;
      const client = ctx.realtime(format, {
        authCallback: (_params, cb) => {
          calls++;
          if (calls === 1) cb(null, expired);
          else cb(new Error('test: no further token'), null);
        },
      });
      const seen = trackConnection(client);
      const first = nextOneOf(client.connection, ['connected', 'disconnected', 'failed'], T.event);
      client.connection.once(['connected', 'disconnected', 'failed'], () => {
        callsAtChange = calls;
      });
      const change = await first;
      ctx.note(`authCallback calls: ${calls}; connection events: ${seen.join(' | ')}`);
      assert.notEqual(change.current, 'connected', 'an expired Auth0 token must not connect');
      assert.equal(change.reason?.code, 40142, `reason: ${change.reason?.code} ${change.reason?.message}`);
      assert.equal(change.reason?.statusCode, 401);
      assert.equal(callsAtChange, 1, 'the refusal answers the one expired token');
      assert.ok(!seen.some((s) => s.endsWith('->connected')), `never connected: ${seen.join(' | ')}`);
    }));
  }
});
