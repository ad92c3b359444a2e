// The Rust SDK's terminal chat (client-sdk/examples/terminal_chat.rs, path from
// TERMINAL_CHAT_BIN) driven through piped stdin, with an ably-js client on the other side:
// history on join, messages both ways, /who, /channels, /join, presence enter/leave, /quit.
//
// Each test gets its own broker, so the chat's default channels (chat:general, chat:random)
// start empty.
import { describe, test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  TERMINAL_CHAT_BIN,
  makeKey,
  mintJwt,
  startBroker,
  withCtx,
  collector,
  publishAll,
  withTimeout,
} from '../lib/helpers.js';

/** Await a presence event with this action and clientId on a collector. */
const seen = (col, action, clientId) =>
  col.waitForMatch((m) => m.action === action && m.clientId === clientId, `presence '${action}' of ${clientId}`);

/** The program's exit ({ code, signal }), within the safety timeout. */
const exitOf = (proc) => withTimeout(proc.exited, T.event, `exit of ${proc.label}`);

describe('terminal chat example', () => {
  const key = makeKey('conformance.root');
  let broker;
  beforeEach(async () => {
    broker = await startBroker({ keys: [key.full], label: 'terminal-chat' });
  });
  afterEach(async () => {
    await broker?.stop();
  });

  const chat = (ctx, args, label) =>
    ctx.spawn(TERMINAL_CHAT_BIN, ['--endpoint', `http://127.0.0.1:${broker.port}`, ...args], { label });

  for (const format of FORMATS) {
    test(`[${format.name}] history, messages both ways, /who, /channels, /join and /quit`, withCtx(() => broker, async (ctx) => {
      const bob = ctx.realtime(format, { key: key.full, clientId: 'ably-bob' });
      const general = bob.channels.get('chat:general');
      const random = bob.channels.get('chat:random');
      const messages = collector();
      const generalPresence = collector('presence events');
      const randomPresence = collector('presence events');
      await general.subscribe(messages.listener);
      await general.presence.subscribe(generalPresence.listener);
      await random.presence.subscribe(randomPresence.listener);
      await publishAll(general, Array.from({ length: 25 }, (_, i) => ['message', `earlier ${i}`]), 1);
      await general.presence.enter('ably-bob');

      const alice = chat(ctx, ['--key', key.full, '--username', 'alice'], 'chat-alice');
      const joined = await alice.waitForLine('-- joined chat:general as alice', { what: 'the join of chat:general' });
      // The last 20 messages, oldest first, before the joined line.
      assert.deepEqual(
        alice.lines.slice(0, joined.index).filter((l) => l.startsWith('[')),
        Array.from({ length: 20 }, (_, i) => `[chat:general] ably-bob: earlier ${i + 5}`),
      );
      await seen(generalPresence, 'enter', 'alice');

      await general.publish('message', 'hello from ably-js');
      await alice.waitForLine('[chat:general] ably-bob: hello from ably-js', { since: joined.index });

      alice.send('hello from the terminal ✓');
      const sent = await messages.waitForMatch((m) => m.data === 'hello from the terminal ✓', 'the chat line');
      assert.equal(sent.clientId, 'alice', 'the username is the clientId');

      let mark = alice.lines.length;
      alice.send('/who');
      await alice.waitForLine((l) => l === 'online in chat:general: ably-bob, alice', { since: mark, what: '/who' });

      mark = alice.lines.length;
      alice.send('/channels');
      const listed = await alice.waitForLine((l) => l === '  chat:random', { since: mark, what: '/channels' });
      assert.deepEqual(alice.lines.slice(listed.index - 1, listed.index + 1), ['* chat:general', '  chat:random']);

      alice.send('/join chat:random');
      const switched = await alice.waitForLine('-- joined chat:random as alice', { since: mark, what: 'the join of chat:random' });
      await seen(generalPresence, 'leave', 'alice'); // switching leaves the old channel
      await seen(randomPresence, 'enter', 'alice');
      await random.presence.enter('ably-bob');
      await alice.waitForLine((l) => l === '* ably-bob joined', { since: switched.index });
      await general.publish('message', 'not for the terminal'); // alice has left chat:general
      await random.publish('message', 'hello random');
      await alice.waitForLine('[chat:random] ably-bob: hello random', { since: switched.index });
      await random.presence.leave();
      await alice.waitForLine((l) => l === '* ably-bob left', { since: switched.index });
      assert.ok(!alice.lines.some((l) => l.includes('not for the terminal')), 'nothing from the channel left');

      mark = alice.lines.length;
      alice.send('/channels');
      const again = await alice.waitForLine((l) => l === '* chat:random', { since: mark, what: '/channels' });
      assert.deepEqual(alice.lines.slice(again.index - 1, again.index + 1), ['  chat:general', '* chat:random']);

      alice.send('/quit');
      await seen(randomPresence, 'leave', 'alice');
      const { code } = await exitOf(alice);
      assert.equal(code, 0);
      assert.equal(alice.lines.at(-1), 'bye');
    }));
  }

  test('--token: the username is the token\'s clientId; --channels; end of input quits', withCtx(() => broker, async (ctx) => {
    const format = FORMATS[0];
    const watcher = ctx.realtime(format, { key: key.full });
    const lobby = watcher.channels.get('lobby:one');
    const messages = collector();
    const presence = collector('presence events');
    await lobby.subscribe(messages.listener);
    await lobby.presence.subscribe(presence.listener);

    const token = mintJwt({ key, clientId: 'dana' });
    const dana = chat(ctx, ['--token', token, '--channels', 'lobby:one,lobby:two'], 'chat-dana');
    await dana.waitForLine('-- joined lobby:one as dana');
    await seen(presence, 'enter', 'dana');
    dana.send('/channels');
    await dana.waitForLine((l) => l === '  lobby:two', { what: '/channels' });
    dana.send('hi from dana');
    const msg = await messages.waitForMatch((m) => m.data === 'hi from dana', 'the chat line');
    assert.equal(msg.clientId, 'dana');

    dana.endInput();
    await seen(presence, 'leave', 'dana');
    assert.equal((await exitOf(dana)).code, 0);
  }));

  test('--key without --username: the username is the first line of input', withCtx(() => broker, async (ctx) => {
    const watcher = ctx.realtime(FORMATS[1], { key: key.full });
    const presence = collector('presence events');
    await watcher.channels.get('chat:general').presence.subscribe(presence.listener);

    const carol = chat(ctx, ['--key', key.full], 'chat-carol');
    carol.send('carol');
    await carol.waitForLine('-- joined chat:general as carol');
    const entered = await seen(presence, 'enter', 'carol');
    assert.equal(entered.data, 'carol', 'presence data is the username');
    carol.send('/quit');
    assert.equal((await exitOf(carol)).code, 0);
  }));

  test('coming back to a channel shows its last 20 messages once, in order', withCtx(() => broker, async (ctx) => {
    const bob = ctx.realtime(FORMATS[0], { key: key.full, clientId: 'ably-bob' });
    const general = bob.channels.get('chat:general');
    const alice = chat(ctx, ['--key', key.full, '--username', 'alice'], 'chat-alice');
    await alice.waitForLine('-- joined chat:general as alice');
    alice.send('/join chat:random');
    await alice.waitForLine('-- joined chat:random as alice');
    await publishAll(general, Array.from({ length: 25 }, (_, i) => ['message', `while away ${i}`]), 1);

    alice.send('/join chat:general');
    const back = await alice.waitForLine('-- chat:general: last 20 messages --');
    await general.publish('message', 'sentinel');
    const end = await alice.waitForLine('[chat:general] ably-bob: sentinel', { since: back.index });
    assert.deepEqual(
      alice.lines.slice(back.index + 1, end.index).filter((l) => l.startsWith('[')),
      Array.from({ length: 20 }, (_, i) => `[chat:general] ably-bob: while away ${i + 5}`),
      'the history, and nothing replayed after it',
    );
  }));
});
