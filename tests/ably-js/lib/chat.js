// @ably/chat (the Chat SDK, pinned in package.json) over ably-js for the suite: a ChatClient
// built on a Realtime client that a test's Ctx made, so that it talks to that test's broker,
// its ably-js frame log and the Chat SDK's own log lines are in the failure diagnostics, and
// it is disposed (its rooms released) and its connection closed at cleanup.
//
// On the realtime side the Chat SDK is a layer over ably-js: room `<name>` is the channel
// `<name>::$chat`, attached with `params.agent` `chat-js/<version>`; typing and room
// reactions are messages carrying `extras.ephemeral`, room presence is the channel's
// presence. Chat messages themselves go through the chat REST API (`/chat/v4/rooms/…`).

import { ChatClient } from '@ably/chat';
import { T, mintJwt, withTimeout } from './helpers.js';

export { ChatClient };

/** The Chat SDK's log level captured into each client's ring buffer (@ably/chat LogLevel). */
const CHAT_LOG_LEVEL = process.env.ABLY_CHAT_LOG_LEVEL || 'info';

/**
 * A ChatClient for `clientId` on the context's broker (or `port`) in `format` (a FORMATS
 * entry: msgpack is `useBinaryProtocol: true`, JSON `false`). The user is identified as an
 * app's token server would do it: by a JWT signed with `key` (makeKey()) carrying
 * `x-ably-clientId` and `capability` (default: everything), and `claims` (more JWT claims, e.g.
 * user claims). `extra` adds ClientOptions, `chatOptions` ChatClientOptions;
 * `label` names the client in diagnostics; `onLog` taps its ably-js log (see Ctx.realtime).
 * The Realtime client is `chat.realtime`.
 */
export function chatClient(
  ctx,
  format,
  { key, clientId, capability, claims, extra = {}, chatOptions = {}, label, port, onLog },
) {
  label = label ?? `${clientId}-chat-${format.name}`;
  const realtime = ctx.realtime(
    format,
    { token: mintJwt({ key, clientId, capability, claims }), ...extra },
    { label, port, onLog },
  );
  // The Chat SDK's lines go into the same ring buffer as the client's frames.
  const lines = ctx.clients.find((c) => c.client === realtime).lines;
  const chat = new ChatClient(realtime, {
    ...chatOptions,
    logLevel: CHAT_LOG_LEVEL,
    logHandler: (message, level, context) => {
      const extra = context ? ` ${JSON.stringify(context).slice(0, 300)}` : '';
      lines.push(`${new Date().toISOString().slice(11, 23)} [chat ${level}] ${message}${extra}`);
      if (lines.length > 120) lines.shift();
    },
  });
  ctx.atCleanup(() => chat.dispose());
  return chat;
}

/** `chat.rooms.get(name, options)`, then `room.attach()`; resolves with the attached room. */
export async function attachedRoom(chat, name, options) {
  const who = chat.clientId;
  const room = await withTimeout(chat.rooms.get(name, options), T.event, `rooms.get('${name}') for ${who}`);
  await withTimeout(room.attach(), T.event, `room '${name}' attach for ${who}`);
  return room;
}
