// The channels listed on the left. Change this one list to offer other rooms.
export const CHANNELS = ['chat:general', 'chat:random', 'chat:help'];

// The chat rooms listed below them, built on @ably/chat: room `lobby` is the channel
// `lobby::$chat` on the broker.
export const CHAT_ROOMS = ['lobby'];

// The reactions offered under each chat-room message (distinct reactions: each user adds each
// one at most once).
export const REACTIONS = ['👍', '❤️', '😂'];

// Room options: occupancy events on (the `occupancy=metrics` attach param).
export const CHAT_ROOM_OPTIONS = { occupancy: { enableEvents: true } };

// How many earlier messages a room shows when it is opened.
export const HISTORY_LIMIT = 50;

// Where the broker is: the page's own origin (the broker serves the built app), or, under the
// Vite dev server, VITE_BROKER_URL.
export function brokerLocation() {
  const url = new URL(import.meta.env.VITE_BROKER_URL || window.location.origin);
  const tls = url.protocol === 'https:';
  return { hostname: url.hostname, port: Number(url.port) || (tls ? 443 : 80), tls };
}
