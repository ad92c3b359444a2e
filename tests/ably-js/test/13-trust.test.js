// Trust boundaries (issue 15): what a client may not do or claim, and what the broker must
// enforce on its behalf (ably-protocol.md §4.6, §4.7, §5.2, §5.4, §5.7, §6.4, §7.2, §7.3,
// §8.3, §8.5, §8.7, §8.8, §9.2, §11). The describe blocks are numbered by the issue's items
// (item 6 is not covered here). Item 13 (presence SYNC on request) is driven through the
// method ably-js itself calls to re-sync an attached channel, as there is no public API for it.
// Items 3, 4, 5 and 12 need the auth changes of the trust-auth branch (admin keys, capability
// intersection, revocation, user bans, token request validation).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Ably,
  FORMATS,
  T,
  makeKey,
  rnd,
  startBroker,
  startAuth0Issuer,
  httpJson,
  withCtx,
  withTimeout,
  connectionState,
  nextEvent,
  nextOneOf,
  deferred,
  uniqueChannel,
  collector,
  rejectionOf,
  expectCode,
} from '../lib/helpers.js';

/**
 * A promise registered before the action that settles it: its rejection (a safety timeout)
 * is reported where it is awaited, not as an unhandled rejection if the test fails first.
 */
function armed(promise) {
  promise.catch(() => {});
  return promise;
}

/** `Authorization: Basic …` for a full key string `name:secret` (§8.1). */
const basic = (full) => `Basic ${Buffer.from(full).toString('base64')}`;

/** A `[[keys]]` table for the broker's --config. */
const keyToml = ({ name, secret }, capability) =>
  `[[keys]]\nname = "${name}"\nsecret = "${secret}"\ncapability = '${JSON.stringify(capability)}'\n`;

/** A key (name, secret, full) that is given to the broker through --config. */
function configKey(name) {
  const secret = rnd(12);
  return { name, secret, full: `${name}:${secret}` };
}

/**
 * Counts frames of one action received by an ably-js client, from its level-4 log, and
 * lets a test await the n-th one: `const f = frameCounter('SYNC'); ctx.realtime(…, {onLog: f.onLog})`.
 */
function frameCounter(action) {
  let count = 0;
  const waiters = [];
  return {
    get count() {
      return count;
    },
    onLog(line) {
      if (line.includes('received on') && line.includes(`action=${action};`)) {
        count++;
        for (let i = waiters.length - 1; i >= 0; i--) {
          if (count >= waiters[i].n) waiters.splice(i, 1)[0].resolve(count);
        }
      }
    },
    /** Resolves once `n` such frames have been received in all. */
    waitFor(n, ms = T.event) {
      if (count >= n) return Promise.resolve(count);
      const d = deferred();
      waiters.push({ n, resolve: d.resolve });
      return withTimeout(d.promise, ms, `${action} frame #${n} (got ${count})`);
    },
  };
}

/** Records every connection event of `client` (including 'update') as text. */
function trackConnection(client) {
  const seen = [];
  const listener = (change) => {
    seen.push(`${change.previous}->${change.current}${change.reason ? `(${change.reason.code})` : ''}`);
  };
  client.connection.on(listener);
  return { seen, stop: () => client.connection.off(listener) };
}

/** Asserts `extras` carries the app's headers and no `userClaim` (§7.2: only the server sets it). */
function assertClaimStripped(extras, what) {
  assert.equal(extras?.userClaim, undefined, `${what}: client-set extras.userClaim must be removed; extras = ${JSON.stringify(extras)}`);
  assert.deepEqual(extras?.headers, { a: 'b' }, `${what}: the app's extras.headers stay intact; extras = ${JSON.stringify(extras)}`);
}

// =============================================================================================
describe('issue 15: trust boundaries (API keys and broker tokens)', () => {
  const full = makeKey('conformance.root');
  // A key limited to chat:* publish+subscribe (§8.7), for the capability-intersection items.
  const chat = configKey('app.chat');
  const CHAT_CAP = { 'chat:*': ['publish', 'subscribe'] };
  let broker;
  let base;
  before(async () => {
    broker = await startBroker({ keys: [full.full], config: keyToml(chat, CHAT_CAP), label: 'trust' });
    base = `http://127.0.0.1:${broker.port}`;
  });
  after(async () => {
    await broker?.stop();
  });

  // -------------------------------------------------------------------------------------------
  describe('item 1 (now issue 18): an edit changes the message, it is never a second one', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] updateMessage, appendMessage and deleteMessage reach subscribers with the original's serial; history, getMessage and getMessageVersions agree`, withCtx(() => broker, async (ctx) => {
        const name = uniqueChannel('upd');
        const client = ctx.realtime(format, { key: full.full });
        const ch = client.channels.get(name);
        const col = collector();
        await ch.subscribe(col.listener);
        await withTimeout(ch.publish('orig', 'v1'), T.event, 'publish orig');
        const [orig] = await col.waitFor(1, T.event);
        assert.equal(typeof orig.serial, 'string', 'a delivered message has a serial (§7.2)');
        assert.equal(orig.action, 'message.create');

        // ably-js sends MESSAGE items of action 1/5/2 with the original's serial (RTL32); the
        // ACK's serial is the version serial (RTL32d).
        const upd = await withTimeout(
          ch.updateMessage({ serial: orig.serial, name: 'orig', data: 'edited' }, { description: 'typo', metadata: { why: 'typo' } }),
          T.event,
          'realtime updateMessage()',
        );
        assert.equal(typeof upd.versionSerial, 'string', `updateMessage() answers a version serial: ${JSON.stringify(upd)}`);
        const app = await withTimeout(ch.appendMessage({ serial: orig.serial, data: '!' }), T.event, 'realtime appendMessage()');
        const del = await withTimeout(ch.deleteMessage({ serial: orig.serial }, { description: 'gone' }), T.event, 'realtime deleteMessage()');
        const seen = await col.waitFor(4, T.event);
        const changes = seen.slice(1);
        assert.deepEqual(changes.map((m) => m.action), ['message.update', 'message.append', 'message.delete']);
        assert.deepEqual(changes.map((m) => m.serial), [orig.serial, orig.serial, orig.serial], "every change carries the original's serial");
        assert.deepEqual(changes.map((m) => m.version.serial), [upd.versionSerial, app.versionSerial, del.versionSerial]);
        assert.ok(orig.serial < upd.versionSerial && upd.versionSerial < app.versionSerial && app.versionSerial < del.versionSerial, 'version serials sort after every earlier one');
        assert.deepEqual(changes.map((m) => m.data), ['edited', '!', 'edited!'], 'an append arrives as its increment');
        assert.equal(changes[0].version.description, 'typo');
        assert.deepEqual(changes[0].version.metadata, { why: 'typo' });
        assert.equal(changes[2].version.description, 'gone');
        assert.equal(client.connection.state, 'connected');

        // REST: history shows the message once, at its place, in its latest version.
        const rest = ctx.rest(format, { key: full.full });
        const rch = rest.channels.get(name);
        await withTimeout(ch.publish('sentinel', 'end'), T.event, 'publish sentinel');
        await col.waitForName('sentinel', T.event);
        const page = await withTimeout(rch.history({ direction: 'forwards' }), T.event, 'history');
        assert.deepEqual(page.items.map((m) => `${m.name}=${m.data}/${m.action}`), ['orig=edited!/message.delete', 'sentinel=end/message.create'], 'history holds the message once, latest version first place');
        assert.equal(page.items[0].serial, orig.serial);
        const got = await withTimeout(rch.getMessage(orig.serial), T.event, 'REST getMessage()');
        assert.equal(got.data, 'edited!');
        assert.equal(got.action, 'message.delete');
        const versions = await withTimeout(rch.getMessageVersions(orig.serial), T.event, 'REST getMessageVersions()');
        assert.deepEqual(versions.items.map((m) => m.data), ['v1', 'edited', 'edited!', 'edited!'], 'every version, oldest first');

        // ably-js REST updateMessage() (PATCH /channels/{c}/messages/{serial}, RSL15).
        const patched = await withTimeout(rch.updateMessage({ serial: orig.serial, data: 'restored' }), T.event, 'REST updateMessage()');
        assert.equal(typeof patched.versionSerial, 'string', `REST updateMessage(): ${JSON.stringify(patched)}`);
        const [restUpdate] = await col.waitFor(6, T.event).then((all) => all.slice(5));
        assert.equal(restUpdate.action, 'message.update');
        assert.equal(restUpdate.data, 'restored');
        assert.equal(restUpdate.version.serial, patched.versionSerial);
      }));
    }
  });

  // -------------------------------------------------------------------------------------------
  describe('item 2: a client-set extras.userClaim never reaches subscribers or history', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] realtime publish, REST publish and presence enter lose userClaim and keep headers`, withCtx(() => broker, async (ctx) => {
        const name = uniqueChannel('claim');
        const pub = ctx.realtime(format, { key: full.full, clientId: 'claimer' }, { label: `pub-${format.name}` });
        const sub = ctx.realtime(format, { key: full.full }, { label: `sub-${format.name}` });
        const subCh = sub.channels.get(name);
        const col = collector();
        await subCh.subscribe(col.listener);
        const pcol = collector('presence events');
        await subCh.presence.subscribe(pcol.listener);

        const extras = { userClaim: 'moderator', headers: { a: 'b' } };
        const pubCh = pub.channels.get(name);
        await withTimeout(pubCh.publish({ name: 'rt', data: 'd', extras }), T.event, 'realtime publish with userClaim');
        const rest = ctx.rest(format, { key: full.full });
        await withTimeout(rest.channels.get(name).publish({ name: 'rest', data: 'd', extras }), T.event, 'REST publish with userClaim');
        // Only a claim: extras may disappear altogether, but never show the claim.
        await withTimeout(pubCh.publish({ name: 'only', data: 'd', extras: { userClaim: 'admin' } }), T.event, 'publish with only userClaim');

        const got = await col.waitFor(3, T.event);
        assert.deepEqual(got.map((m) => m.name), ['rt', 'rest', 'only']);
        assertClaimStripped(got[0].extras, 'realtime-published message');
        assertClaimStripped(got[1].extras, 'REST-published message');
        assert.equal(got[2].extras?.userClaim, undefined, `extras with only a claim: ${JSON.stringify(got[2].extras)}`);
        const page = await withTimeout(rest.channels.get(name).history({ direction: 'forwards' }), T.event, 'history');
        assert.deepEqual(page.items.map((m) => m.name), ['rt', 'rest', 'only']);
        assertClaimStripped(page.items[0].extras, 'history: realtime-published message');
        assertClaimStripped(page.items[1].extras, 'history: REST-published message');
        assert.equal(page.items[2].extras?.userClaim, undefined, `history: only a claim: ${JSON.stringify(page.items[2].extras)}`);

        // Presence: ably-js sends a PresenceMessage given to enter() as is, extras included (§6.1).
        const item = Ably.Realtime.PresenceMessage.fromValues({ data: 'here', extras });
        await withTimeout(pubCh.presence.enter(item), T.event, 'presence enter with userClaim');
        const entered = await pcol.waitForMatch((p) => p.action === 'enter' && p.clientId === 'claimer', 'enter of claimer');
        assert.equal(entered.data, 'here');
        assertClaimStripped(entered.extras, 'presence enter event');
        // The stored member, as a late attacher gets it by SYNC (§6.4).
        const late = ctx.realtime(format, { key: full.full }, { label: `late-${format.name}` });
        const members = await withTimeout(late.channels.get(name).presence.get(), T.event, 'presence.get() on a late attacher');
        assert.deepEqual(members.map((m) => m.clientId), ['claimer']);
        assertClaimStripped(members[0].extras, 'synced presence member');
      }));
    }
  });

  // -------------------------------------------------------------------------------------------
  describe('item 4: a token gets the intersection of what it asks for and the key allows', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] requestToken({"*":["*"]}) with a chat:* key → chat:* only; the token cannot attach news`, withCtx(() => broker, async (ctx) => {
        const rest = ctx.rest(format, { key: chat.full });
        const td = await withTimeout(rest.auth.requestToken({ capability: { '*': ['*'] } }), T.event, 'requestToken');
        assert.deepEqual(JSON.parse(td.capability), CHAT_CAP, `TokenDetails.capability is the intersection (§8.7): ${td.capability}`);

        const client = ctx.realtime(format, { token: td.token });
        await connectionState(client, 'connected');
        const news = client.channels.get('news');
        await expectCode(news.attach(), 40160, 'attach(news) with the intersected token', 401);
        assert.equal(news.state, 'failed', 'channel FAILED on ERROR{channel} (§5.7)');
        const ok = client.channels.get(uniqueChannel('chat:x'));
        await withTimeout(ok.attach(), T.event, 'attach(chat:x)');
        assert.deepEqual([...(ok.modes ?? [])].sort(), ['presence_subscribe', 'publish', 'subscribe'], `modes (§8.8): ${JSON.stringify(ok.modes)}`);
        assert.equal(client.connection.state, 'connected');
      }));
    }

    test('an unsigned token request keeps the order of the operations asked for', withCtx(() => broker, async () => {
      // ably-js sorts the operations before signing (§8.3), so this goes over raw HTTP.
      const res = await httpJson(`${base}/keys/${chat.name}/requestToken`, {
        method: 'POST',
        headers: { Authorization: basic(chat.full), 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ keyName: chat.name, capability: JSON.stringify({ 'chat:*': ['subscribe', 'publish'] }) }),
      });
      assert.equal(res.status, 200, `requestToken: ${res.status} ${JSON.stringify(res.body)}`);
      assert.deepEqual(JSON.parse(res.body.capability), { 'chat:*': ['subscribe', 'publish'] }, `capability: ${res.body.capability}`);
    }));
  });

  // -------------------------------------------------------------------------------------------
  describe('item 5: revokeTokens closes the connections of that clientId', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] revoked: the live connection renews through authCallback; the old token is refused with 40141`, withCtx(() => broker, async (ctx) => {
        const clientId = `alice-${format.name}-${rnd(3)}`;
        const keyRest = ctx.rest(format, { key: full.full });
        const first = await withTimeout(keyRest.auth.requestToken({ clientId }), T.event, 'requestToken for alice');
        const tokens = [];
        const alice = ctx.realtime(format, {
          authCallback: (_params, cb) => {
            if (tokens.length === 0) {
              tokens.push(first.token);
              cb(null, first);
              return;
            }
            keyRest.auth.requestToken({ clientId }).then(
              (td) => {
                tokens.push(td.token);
                cb(null, td);
              },
              (err) => cb(err, null),
            );
          },
        }, { label: `alice-${format.name}` });
        await connectionState(alice, 'connected');
        assert.equal(alice.auth.clientId, clientId);
        const seen = trackConnection(alice);

        const dropped = armed(nextOneOf(alice.connection, ['disconnected', 'suspended', 'failed'], T.event, "alice's connection closed by the revocation"));
        const result = await withTimeout(keyRest.auth.revokeTokens([{ type: 'clientId', value: clientId }]), T.event, 'revokeTokens');
        ctx.note(`revokeTokens result: ${JSON.stringify(result)}`);
        const change = await dropped;
        assert.equal(change.current, 'disconnected', `a revoked token is a token error, renewable (§8.5): ${seen.seen.join(' | ')}`);
        assert.equal(change.reason?.code, 40141, `reason: ${change.reason?.code} ${change.reason?.message}`);
        // ably-js asks authCallback for a fresh token and reconnects with it.
        await connectionState(alice, 'connected');
        ctx.note(`alice: ${seen.seen.join(' | ')}; tokens handed out: ${tokens.length}`);
        assert.ok(tokens.length >= 2, 'authCallback was asked for a new token');
        const ch = alice.channels.get(uniqueChannel('chat:after-revoke'));
        const col = collector();
        await ch.subscribe(col.listener);
        await withTimeout(ch.publish('back', 'x'), T.event, 'publish after reconnecting');
        const [msg] = await col.waitFor(1, T.event);
        assert.equal(msg.clientId, clientId);

        // The revoked token itself no longer connects.
        const again = ctx.realtime(format, { token: first.token }, { label: `old-token-${format.name}` });
        const refused = await nextOneOf(again.connection, ['connected', 'disconnected', 'failed']);
        assert.notEqual(refused.current, 'connected', 'a revoked token must not connect');
        assert.equal(refused.reason?.code, 40141, `reason: ${refused.reason?.code} ${refused.reason?.message}`);
      }));
    }
  });

  // -------------------------------------------------------------------------------------------
  describe('item 7: rewind given as a number', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] params {rewind: 1} and {rewind: '1'} attach and deliver the last message`, withCtx(() => broker, async (ctx) => {
        const name = uniqueChannel('rewind-num');
        const rest = ctx.rest(format, { key: full.full });
        const restCh = rest.channels.get(name);
        await withTimeout(restCh.publish('old-1', 'a'), T.event, 'publish old-1');
        await withTimeout(restCh.publish('old-2', 'b'), T.event, 'publish old-2');

        // ably-js sends ChannelOptions.params as given, so a number stays a number on the wire (§5.4).
        let last = 'old-2';
        for (const rewind of [1, '1']) {
          const what = `rewind ${JSON.stringify(rewind)}`;
          const client = ctx.realtime(format, { key: full.full }, { label: `rewind-${typeof rewind}-${format.name}` });
          const ch = client.channels.get(name, { params: { rewind } });
          const col = collector();
          await withTimeout(ch.subscribe(col.listener), T.event, `attach with ${what}`);
          assert.equal(ch.state, 'attached', `${what}: attached (not failed: ${ch.errorReason?.code} ${ch.errorReason?.message})`);
          await col.waitFor(1, T.event);
          const live = `live-${typeof rewind}`;
          await withTimeout(restCh.publish(live, 'c'), T.event, `publish ${live}`);
          await col.waitForName(live, T.event);
          assert.deepEqual(col.messages.map((m) => m.name), [last, live], `${what}: the last message, then live`);
          last = live;
        }
      }));
    }
  });

  // -------------------------------------------------------------------------------------------
  describe('item 8: recover while the original connection is alive', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] original and recovered copy settle as two connections (80008 for the original)`, withCtx(() => broker, async (ctx) => {
        const a = ctx.realtime(format, { key: full.full }, { label: `A-${format.name}` });
        await connectionState(a, 'connected');
        const idA = a.connection.id;
        const recoveryKey = a.connection.createRecoveryKey();
        const aDropped = armed(nextEvent(a.connection, 'disconnected', T.event, "A 'disconnected' once B recovers its connection"));
        const aBack = armed(nextEvent(a.connection, 'connected', T.event, "A 'connected' again"));

        const b = ctx.realtime(format, { key: full.full, recover: recoveryKey }, { label: `B-${format.name}` });
        const bChange = await nextOneOf(b.connection, ['connected', 'disconnected', 'failed']);
        assert.equal(bChange.current, 'connected', `B: ${bChange.reason?.code} ${bChange.reason?.message}`);
        assert.equal(b.connection.id, idA, 'recover keeps the connectionId (§4.6)');
        assert.equal(bChange.reason ?? null, null, `a successful recover carries no error: ${bChange.reason?.code}`);

        // The broker retires A's socket (the connection now belongs to B); A's resume with
        // its old key fails: a new connection with 80008 (§4.6 RTN15c7).
        await aDropped;
        const aChange = await aBack;
        assert.notEqual(a.connection.id, idA, 'A gets a new connectionId');
        assert.equal(aChange.reason?.code, 80008, `A's failed resume: ${aChange.reason?.code} ${aChange.reason?.message}`);
        assert.equal(b.connection.state, 'connected');
        assert.equal(b.connection.id, idA);

        // Settled: from here on neither changes state while both publish and receive.
        const idA2 = a.connection.id;
        const ta = trackConnection(a);
        const tb = trackConnection(b);
        const name = uniqueChannel('recover');
        const chA = a.channels.get(name);
        const chB = b.channels.get(name);
        const colA = collector();
        const colB = collector();
        await withTimeout(chA.subscribe(colA.listener), T.event, 'A attach');
        await withTimeout(chB.subscribe(colB.listener), T.event, 'B attach');
        await withTimeout(chA.publish('fromA', 'a'), T.event, 'A publish');
        await withTimeout(chB.publish('fromB', 'b'), T.event, 'B publish');
        await Promise.all([colA.waitForName('fromB', T.event), colB.waitForName('fromA', T.event)]);
        await withTimeout(Promise.all([a.connection.ping(), b.connection.ping()]), T.event, 'ping on both');
        ta.stop();
        tb.stop();
        assert.deepEqual(ta.seen, [], `A changed state after settling: ${ta.seen.join(' | ')}`);
        assert.deepEqual(tb.seen, [], `B changed state after settling: ${tb.seen.join(' | ')}`);
        assert.equal(a.connection.id, idA2);
        assert.equal(b.connection.id, idA);
        const byName = (col, n) => col.messages.find((m) => m.name === n);
        assert.equal(byName(colB, 'fromA').connectionId, idA2, 'A publishes as its new connection');
        assert.equal(byName(colA, 'fromB').connectionId, idA, 'B publishes as the recovered connection');
      }));

      test(`[${format.name}] a malformed recovery key connects afresh with 80018`, withCtx(() => broker, async (ctx) => {
        const client = ctx.realtime(format, {
          key: full.full,
          recover: '{"connectionKey":"nobang","msgSerial":0,"channelSerials":{}}',
        });
        const change = await nextOneOf(client.connection, ['connected', 'disconnected', 'failed']);
        assert.equal(change.current, 'connected', `reason: ${change.reason?.code} ${change.reason?.message}`);
        assert.equal(change.reason?.code, 80018, `CONNECTED.error for a key without '!': ${change.reason?.code} ${change.reason?.message}`);
        assert.equal(client.connection.errorReason?.code, 80018, 'connection.errorReason');
        assert.equal(typeof client.connection.id, 'string');
        assert.notEqual(client.connection.id, 'nobang');
        await withTimeout(client.connection.ping(), T.event, 'ping on the new connection');
      }));
    }
  });

  // -------------------------------------------------------------------------------------------
  describe('item 9: ATTACH modes are enforced and reported', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] modes ['SUBSCRIBE'] on a full key: publish and presence enter → 40160; params.modes and modes show the grant`, withCtx(() => broker, async (ctx) => {
        const name = uniqueChannel('modes');
        const client = ctx.realtime(format, { key: full.full, clientId: 'moder' });
        const ch = client.channels.get(name, { modes: ['SUBSCRIBE'] });
        await withTimeout(ch.attach(), T.event, 'attach with modes [SUBSCRIBE]');
        assert.deepEqual(ch.modes, ['subscribe'], `channel.modes (§5.2): ${JSON.stringify(ch.modes)}`);
        assert.equal(ch.params?.modes, 'subscribe', `channel.params: ${JSON.stringify(ch.params)}`);
        await expectCode(ch.publish('x', 'y'), 40160, 'publish on a subscribe-only attachment', 401);
        await expectCode(ch.presence.enter('no'), 40160, 'presence.enter on a subscribe-only attachment', 401);
        assert.equal(ch.state, 'attached', 'refusals are per operation');
        assert.equal(client.connection.state, 'connected');

        const ch2 = client.channels.get(uniqueChannel('modes2'), { modes: ['PUBLISH', 'SUBSCRIBE'] });
        const col = collector();
        await withTimeout(ch2.subscribe(col.listener), T.event, 'attach with modes [PUBLISH, SUBSCRIBE]');
        assert.deepEqual([...ch2.modes].sort(), ['publish', 'subscribe'], `channel.modes: ${JSON.stringify(ch2.modes)}`);
        assert.equal(ch2.params?.modes, 'publish,subscribe', `channel.params: ${JSON.stringify(ch2.params)}`);
        await withTimeout(ch2.publish('ok', 'y'), T.event, 'publish in PUBLISH mode');
        await col.waitForName('ok', T.event);
        await expectCode(ch2.presence.enter('no'), 40160, 'presence.enter without PRESENCE mode', 401);
      }));
    }
  });

  // -------------------------------------------------------------------------------------------
  describe('item 10: channel names with an empty namespace are refused', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] attach(':hell') and attach('::') → 40010, channel failed`, withCtx(() => broker, async (ctx) => {
        const client = ctx.realtime(format, { key: full.full });
        await connectionState(client, 'connected');
        for (const name of [':hell', '::']) {
          const ch = client.channels.get(name);
          await expectCode(ch.attach(), 40010, `attach(${JSON.stringify(name)})`, 400);
          assert.equal(ch.state, 'failed', `${JSON.stringify(name)}: channel FAILED (§5.7)`);
          assert.equal(ch.errorReason?.code, 40010);
        }
        assert.equal(client.connection.state, 'connected', 'a bad channel name is a channel error only');
        await withTimeout(client.channels.get(uniqueChannel('fine')).attach(), T.event, 'attach of a valid name');
      }));
    }
  });

  // -------------------------------------------------------------------------------------------
  describe('item 11: a short-lived token that cannot be renewed', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] a 5 s token alone: no server AUTH, DISCONNECTED 40142 at expiry`, withCtx(() => broker, async (ctx) => {
        const keyRest = ctx.rest(format, { key: full.full });
        const td = await withTimeout(keyRest.auth.requestToken({ ttl: 5000 }), T.event, 'requestToken ttl 5 s');
        const auth = frameCounter('AUTH');
        const client = ctx.realtime(format, { token: td.token }, { onLog: auth.onLog });
        const first = await nextOneOf(client.connection, ['connected', 'disconnected', 'failed']);
        assert.equal(first.current, 'connected', `reason: ${first.reason?.code} ${first.reason?.message}`);
        const seen = trackConnection(client);
        // A server AUTH would make ably-js, with no way to renew, fail the connection with
        // 40171 (§4.7); the broker lets the token run out instead and says so (§8.5).
        const gaveUp = armed(nextEvent(client.connection, 'failed', T.event, "'failed' after the token ran out"));
        const change = await nextOneOf(client.connection, ['disconnected', 'suspended', 'failed'], T.event, 'the end of the 5 s token');
        ctx.note(`connection: ${seen.seen.join(' | ')}; AUTH frames received: ${auth.count}`);
        assert.equal(auth.count, 0, 'no AUTH sent to a client whose token is shorter than the renewal lead');
        assert.equal(change.current, 'disconnected', `state at expiry: ${seen.seen.join(' | ')}`);
        assert.equal(change.reason?.code, 40142, `reason: ${change.reason?.code} ${change.reason?.message}`);
        assert.equal(change.reason?.statusCode, 401);
        // ably-js then finds it has no way to get a new token and stops with its own 40171
        // (`connectionmanager.ts: actOnErrorFromAuthorize`, §8.5): the end a token-only client
        // is meant to reach.
        const end = await gaveUp;
        assert.equal(end.reason?.code, 40171, `final state: ${end.reason?.code} ${end.reason?.message}`);
      }));
    }
  });

  // -------------------------------------------------------------------------------------------
  describe('item 12: token request parameters are validated', () => {
    const requestToken = (key, body) =>
      httpJson(`${base}/keys/${key.name}/requestToken`, {
        method: 'POST',
        headers: { Authorization: basic(key.full), 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ keyName: key.name, ...body }),
      });
    const assertAblyError = (res, what) => {
      assert.equal(typeof res.body?.error?.code, 'number', `${what}: Ably error body (§9.1): ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.statusCode, res.status, `${what}: error.statusCode`);
    };

    test('ttl 500 gives expires − issued = 500; ttl "abc" and a non-object capability → 400; an empty intersection → 40160', withCtx(() => broker, async (ctx) => {
      const rest = ctx.rest(FORMATS[0], { key: full.full });
      const td = await withTimeout(rest.auth.requestToken({ ttl: 500 }), T.event, 'requestToken ttl 500');
      assert.equal(td.expires - td.issued, 500, `issued ${td.issued}, expires ${td.expires}`);

      const badTtl = await requestToken(full, { ttl: 'abc' });
      assert.equal(badTtl.status, 400, `ttl "abc": ${badTtl.status} ${JSON.stringify(badTtl.body)}`);
      assertAblyError(badTtl, 'ttl "abc"');
      const badCap = await requestToken(full, { capability: '["*","publish"]' });
      assert.equal(badCap.status, 400, `capability array: ${badCap.status} ${JSON.stringify(badCap.body)}`);
      assertAblyError(badCap, 'capability array');

      // chat:* key asking for news only: nothing is left of the request (§8.7).
      const chatRest = ctx.rest(FORMATS[0], { key: chat.full });
      await expectCode(chatRest.auth.requestToken({ capability: { news: ['publish'] } }), 40160, 'requestToken outside the key capability');
      const raw = await requestToken(chat, { capability: JSON.stringify({ news: ['publish'] }) });
      assert.equal(raw.body?.error?.code, 40160, `unsigned request outside the key: ${raw.status} ${JSON.stringify(raw.body)}`);
    }));
  });

  // -------------------------------------------------------------------------------------------
  describe('item 13: presence SYNC on request', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] a client SYNC on an attached channel gets the presence set again`, withCtx(() => broker, async (ctx) => {
        const name = uniqueChannel('resync');
        for (const id of ['m1', 'm2']) {
          const m = ctx.realtime(format, { key: full.full, clientId: id }, { label: `${id}-${format.name}` });
          await withTimeout(m.channels.get(name).presence.enter(id), T.event, `${id} enters`);
        }
        const syncs = frameCounter('SYNC');
        const obs = ctx.realtime(format, { key: full.full }, { label: `obs-${format.name}`, onLog: syncs.onLog });
        const ch = obs.channels.get(name);
        const before = await withTimeout(ch.presence.get(), T.event, 'presence.get() after attach');
        assert.deepEqual(before.map((m) => m.clientId).sort(), ['m1', 'm2']);
        const n = syncs.count;
        assert.ok(n >= 1, 'the attach brought a SYNC (§6.4)');

        // ably-js sends SYNC {channel} from checkPendingState() on an attached channel (after an
        // 80016 channel error); sync() is that very call.
        ch.sync();
        await syncs.waitFor(n + 1);
        const after = await withTimeout(ch.presence.get(), T.event, 'presence.get() after the re-sync');
        assert.deepEqual(after.map((m) => m.clientId).sort(), ['m1', 'm2'], 'the re-sync lists the same members');
        assert.equal(ch.state, 'attached');
        assert.equal(obs.connection.state, 'connected');
      }));
    }
  });

  // -------------------------------------------------------------------------------------------
  describe('item 14: REST publish on behalf of a realtime connection (connectionKey)', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] connectionId is the realtime connection's; echoMessages:false suppresses it; a bad key → 400`, withCtx(() => broker, async (ctx) => {
        const name = uniqueChannel('onbehalf');
        const rest = ctx.rest(format, { key: full.full });
        const restCh = rest.channels.get(name);

        const r = ctx.realtime(format, { key: full.full }, { label: `R-${format.name}` });
        const rCh = r.channels.get(name);
        const rCol = collector();
        await rCh.subscribe(rCol.listener);
        // Message.connectionKey: "published on behalf of that Realtime client" (§7.2).
        await withTimeout(restCh.publish({ name: 'viaRest', data: 'x', connectionKey: r.connection.key }), T.event, 'REST publish with connectionKey');
        const [got] = await rCol.waitFor(1, T.event);
        assert.equal(got.name, 'viaRest');
        assert.equal(got.connectionId, r.connection.id, 'attributed to the realtime connection');

        // With echoMessages:false, R does not get its own message back; another subscriber does.
        const quiet = ctx.realtime(format, { key: full.full, echoMessages: false }, { label: `Rq-${format.name}` });
        const other = ctx.realtime(format, { key: full.full }, { label: `S-${format.name}` });
        const qCol = collector();
        const oCol = collector();
        await quiet.channels.get(name).subscribe(qCol.listener);
        await other.channels.get(name).subscribe(oCol.listener);
        await withTimeout(restCh.publish({ name: 'quiet', data: 'y', connectionKey: quiet.connection.key }), T.event, 'REST publish for the echo-less connection');
        const seenByOther = await oCol.waitForMatch((m) => m.name === 'quiet', "other subscriber gets 'quiet'");
        assert.equal(seenByOther.connectionId, quiet.connection.id);
        // A later plain publish reaches the echo-less client; 'quiet' would have come before it.
        await withTimeout(restCh.publish('after', 'z'), T.event, 'plain REST publish');
        await qCol.waitForName('after', T.event);
        assert.deepEqual(qCol.messages.map((m) => m.name), ['after'], 'no echo of its own (REST-on-behalf) message');

        const bad = await rejectionOf(
          restCh.publish({ name: 'bad', data: 'x', connectionKey: `${r.connection.id}!not-the-secret` }),
          'REST publish with an invalid connectionKey',
        );
        assert.equal(bad.statusCode, 400, `invalid connectionKey: ${bad.code}/${bad.statusCode} ${bad.message}`);
        assert.equal(bad.code, 40006, `invalid connectionKey is a malformed message (40006): ${bad.code} ${bad.message}`);
        const page = await withTimeout(restCh.history({ direction: 'forwards' }), T.event, 'history');
        assert.deepEqual(page.items.map((m) => m.name), ['viaRest', 'quiet', 'after'], 'the refused publish stored nothing');
      }));
    }
  });
});

// =============================================================================================
describe('issue 15: trust boundaries (Auth0 users and admin routes)', () => {
  const full = makeKey('conformance.root');
  const reader = configKey('app.reader');
  const admin = configKey('app.useradmin');
  const PERMISSIONS = ['publish:chat:*', 'subscribe:chat:*', 'presence:chat:*'];
  let issuer;
  let broker;
  let base;

  before(async () => {
    issuer = await startAuth0Issuer();
    const config = [
      issuer.config(),
      keyToml(reader, { 'chat:*': ['subscribe'] }),
      keyToml(admin, { '[admin]users': ['*'] }),
    ].join('\n');
    broker = await startBroker({ keys: [full.full], config, label: 'trust-auth0' });
    base = `http://127.0.0.1:${broker.port}`;
  });
  after(async () => {
    await broker?.stop();
    await issuer?.close();
  });

  /** A new Auth0 user: their Auth0 token and their record from GET /api/users/me. */
  async function newUser(label) {
    const sub = `auth0|trust-${label}-${rnd(4)}`;
    const token = issuer.mint({ sub, permissions: PERMISSIONS });
    const me = await httpJson(`${base}/api/users/me`, { headers: { Authorization: `Bearer ${token}` } });
    assert.equal(me.status, 200, `GET /api/users/me: ${me.status} ${JSON.stringify(me.body)}`);
    return { sub, token, id: me.body.id, user: me.body };
  }

  const asKey = (key, path, { method = 'GET', body } = {}) =>
    httpJson(`${base}${path}`, {
      method,
      headers: {
        Authorization: basic(key.full),
        Accept: 'application/json',
        ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}),
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });

  const loginAs = (auth0Token) =>
    httpJson(`${base}/api/auth/token`, { headers: { Authorization: `Bearer ${auth0Token}` } });

  // -------------------------------------------------------------------------------------------
  describe('item 3: the admin routes need an admin credential', () => {
    test('a chat:* subscribe key is refused on /api/users…; {"*":["*"]} and {"[admin]users":["*"]} keys are allowed', withCtx(() => broker, async () => {
      const victim = await newUser('admin-routes');
      const userPath = `/api/users/${encodeURIComponent(victim.id)}`;
      const attempts = [
        ['GET', '/api/users'],
        ['GET', userPath],
        ['PATCH', userPath, { firstName: 'Mallory' }],
        ['DELETE', userPath],
      ];
      for (const [method, path, body] of attempts) {
        const what = `${method} ${path} with a subscribe-only key`;
        const res = await asKey(reader, path, { method, body });
        assert.ok([401, 403].includes(res.status), `${what}: ${res.status} ${JSON.stringify(res.body)}`);
        const err = res.body?.error;
        assert.equal(typeof err?.code, 'number', `${what}: Ably error body (§9.1): ${JSON.stringify(res.body)}`);
        assert.equal(err.statusCode, res.status, `${what}: error.statusCode`);
        assert.equal(typeof err.message, 'string', `${what}: error.message`);
      }

      // Nothing of that happened: the user is there, unchanged.
      const check = await asKey(admin, userPath);
      assert.equal(check.status, 200, `GET with the [admin]users key: ${check.status} ${JSON.stringify(check.body)}`);
      assert.equal(check.body.id, victim.id);
      assert.notEqual(check.body.firstName, 'Mallory', 'the refused PATCH changed nothing');

      for (const key of [full, admin]) {
        const list = await asKey(key, '/api/users?limit=200');
        assert.equal(list.status, 200, `GET /api/users with ${key.name}: ${list.status} ${JSON.stringify(list.body)}`);
        assert.ok(list.body.users.some((u) => u.id === victim.id), `${key.name}: the user is listed`);
      }
      const patched = await asKey(admin, userPath, { method: 'PATCH', body: { firstName: 'Renamed' } });
      assert.equal(patched.status, 200, `PATCH with the [admin]users key: ${patched.status} ${JSON.stringify(patched.body)}`);
      assert.equal(patched.body.firstName, 'Renamed');
      const byFull = await asKey(full, userPath);
      assert.equal(byFull.status, 200);
      assert.equal(byFull.body.firstName, 'Renamed');
    }));
  });

  // -------------------------------------------------------------------------------------------
  describe('item 5: deleting a user ends their access until restored', () => {
    for (const format of FORMATS) {
      test(`[${format.name}] DELETE /api/users/{id}: live connection FAILED, old token 40141, login 403; restore lets them back`, withCtx(() => broker, async (ctx) => {
        const u = await newUser(`deleted-${format.name}`);
        const login = await loginAs(u.token);
        assert.equal(login.status, 200, `/api/auth/token: ${login.status} ${JSON.stringify(login.body)}`);
        const brokerToken = login.body.token;

        const client = ctx.realtime(format, { token: brokerToken }, { label: `user-${format.name}` });
        await connectionState(client, 'connected');
        assert.equal(client.auth.clientId, u.id);
        const closed = armed(nextOneOf(client.connection, ['disconnected', 'suspended', 'failed', 'closed'], T.event, "the deleted user's connection ending"));

        const del = await asKey(admin, `/api/users/${encodeURIComponent(u.id)}`, { method: 'DELETE' });
        assert.equal(del.status, 200, `DELETE with the [admin]users key: ${del.status} ${JSON.stringify(del.body)}`);
        const change = await closed;
        const code = change.reason?.code;
        ctx.note(`deleted user's connection: ${change.previous}->${change.current} (${code} ${change.reason?.message})`);
        assert.equal(change.current, 'failed', `a deleted user is not to reconnect: ${change.current} ${code}`);
        assert.ok(!(code >= 40140 && code <= 40149), `not a (renewable) token error: ${code}`);
        assert.equal(client.connection.errorReason?.code, code);

        // The broker token minted before the deletion is refused on a new connection.
        const again = ctx.realtime(format, { token: brokerToken }, { label: `again-${format.name}` });
        const refused = await nextOneOf(again.connection, ['connected', 'disconnected', 'failed']);
        assert.notEqual(refused.current, 'connected', 'the old broker token must not connect');
        assert.equal(refused.reason?.code, 40141, `reason: ${refused.reason?.code} ${refused.reason?.message}`);

        // Their next login is refused; an admin restores them and they can log in again.
        const denied = await loginAs(issuer.mint({ sub: u.sub, permissions: PERMISSIONS }));
        assert.equal(denied.status, 403, `login after deletion: ${denied.status} ${JSON.stringify(denied.body)}`);
        assert.equal(denied.body?.error?.statusCode, 403, `error body: ${JSON.stringify(denied.body)}`);
        const restore = await asKey(full, `/api/users/${encodeURIComponent(u.id)}/restore`, { method: 'POST' });
        assert.equal(restore.status, 200, `POST …/restore: ${restore.status} ${JSON.stringify(restore.body)}`);
        const back = await loginAs(issuer.mint({ sub: u.sub, permissions: PERMISSIONS }));
        assert.equal(back.status, 200, `login after restore: ${back.status} ${JSON.stringify(back.body)}`);
        assert.equal(back.body.clientId, u.id, 'restored as the same user');
        const fresh = ctx.realtime(format, { token: back.body.token }, { label: `restored-${format.name}` });
        const ok = await nextOneOf(fresh.connection, ['connected', 'disconnected', 'failed']);
        assert.equal(ok.current, 'connected', `restored user connects: ${ok.reason?.code} ${ok.reason?.message}`);
        assert.equal(fresh.auth.clientId, u.id);
      }));
    }
  });
});
