import { useContext, useEffect, useMemo, useReducer, useRef, useState } from 'react';
import {
  ChatRoomContext,
  useChatClient,
  useMessages,
  useOccupancy,
  usePresence,
  usePresenceListener,
  useTyping,
} from '@ably/chat/react';
import { HISTORY_LIMIT, REACTIONS } from './config.js';
import Avatar from './Avatar.jsx';
import { displayName, useProfiles } from './profiles.js';

// A chat room built on @ably/chat (the Chat SDK): the room `name` is the channel
// `<name>::$chat` on the broker. Messages are sent, edited and deleted through the chat REST
// API (/chat/v4/rooms/…), reactions are annotations summed up by the broker, typing is
// ephemeral messages, and the occupancy comes from `[meta]occupancy` events. Must be inside a
// ChatClientProvider and a ChatRoomProvider (see Chat.jsx).

const timeOf = (date) =>
  date ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';

const isDeleted = (m) => m.action === 'message.delete';
const isEdited = (m) => m.action === 'message.update';

// Messages by serial. History (read once, older) and live events (newer) arrive in either
// order: a live version wins over a history one unless the history one is newer
// (Message.with keeps the latest version), and a reaction summary for a message not loaded
// yet waits for it.
const emptyMessages = { bySerial: new Map(), summaries: new Map(), loaded: false };

function messagesReducer(state, action) {
  const bySerial = new Map(state.bySerial);
  const summaries = new Map(state.summaries);
  const withSummary = (m) => {
    const s = summaries.get(m.serial);
    if (!s) return m;
    summaries.delete(m.serial);
    return m.with(s);
  };
  switch (action.type) {
    case 'history': {
      for (const m of action.items) {
        const live = bySerial.get(m.serial);
        bySerial.set(m.serial, withSummary(live ? live.with(m) : m));
      }
      return { bySerial, summaries, loaded: true };
    }
    case 'event': {
      const { event } = action;
      if (event.messageSerial) {
        // A reaction summary: the message's reactions as they are now.
        const m = bySerial.get(event.messageSerial);
        if (m) bySerial.set(m.serial, m.with(event));
        else summaries.set(event.messageSerial, event);
        return { ...state, bySerial, summaries };
      }
      const m = event.message;
      const known = bySerial.get(m.serial);
      if (!known) bySerial.set(m.serial, withSummary(m));
      else if (event.type !== 'message.created') bySerial.set(m.serial, known.with(event));
      return { ...state, bySerial, summaries };
    }
    case 'failed':
      return { ...state, loaded: true };
    default:
      return state;
  }
}

function useRoomMessages() {
  const [state, dispatch] = useReducer(messagesReducer, emptyMessages);
  const listener = (event) => dispatch({ type: 'event', event });
  const api = useMessages({ listener, reactionsListener: listener });
  const { historyBeforeSubscribe } = api;
  const [error, setError] = useState(null);

  // Earlier messages, each once in its latest version with its reactions: everything up to
  // the point the subscription started, so that nothing falls between history and live.
  useEffect(() => {
    if (!historyBeforeSubscribe) return;
    let live = true;
    historyBeforeSubscribe({ limit: HISTORY_LIMIT }).then(
      (page) => live && dispatch({ type: 'history', items: [...page.items].reverse() }),
      (err) => {
        if (!live) return;
        dispatch({ type: 'failed' });
        setError('Could not load earlier messages: ' + (err.message || err));
      },
    );
    return () => {
      live = false;
    };
  }, [historyBeforeSubscribe]);

  const messages = useMemo(
    () => [...state.bySerial.values()].sort((a, b) => (a.serial < b.serial ? -1 : 1)),
    [state.bySerial],
  );
  return { ...api, messages, loaded: state.loaded, error, setError };
}

// The room's occupancy: live from the occupancy events, and read afresh (occupancy.get())
// whenever the presence set changes, because the broker debounces events that change no count
// from or to zero (up to 15 s).
function useRoomOccupancy(presenceKey) {
  const [occupancy, setOccupancy] = useState(null);
  useOccupancy({ listener: (e) => setOccupancy(e.occupancy) });
  const { room } = useContext(ChatRoomContext);
  useEffect(() => {
    let live = true;
    room
      .then((r) => r.occupancy.get())
      .then(
      (o) => live && setOccupancy(o),
      () => {},
    );
    return () => {
      live = false;
    };
  }, [room, presenceKey]);
  return occupancy;
}

function typingText(names) {
  if (names.length === 0) return '';
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

function Reactions({ message, me, onToggle }) {
  const distinct = message.reactions?.distinct ?? {};
  return (
    <div className="reactions" data-testid="reactions">
      {REACTIONS.map((name) => {
        const summary = distinct[name];
        const count = summary?.total ?? 0;
        const mine = Boolean(summary?.clientIds?.includes(me));
        return (
          <button
            key={name}
            type="button"
            className={'reaction' + (mine ? ' mine' : '') + (count ? ' used' : '')}
            data-testid="reaction"
            data-name={name}
            aria-pressed={mine}
            title={mine ? `Remove your ${name}` : `React with ${name}`}
            onClick={() => onToggle(message, name, mine)}
          >
            <span aria-hidden="true">{name}</span>
            <span className="count" data-testid="reaction-count">
              {count || ''}
            </span>
          </button>
        );
      })}
    </div>
  );
}

function MessageItem({ message, me, profiles, onEdit, onDelete, onReact }) {
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState('');
  const profile = profiles.get(message.clientId);
  const name = displayName(profile, message.clientId);
  const mine = message.clientId === me;
  const deleted = isDeleted(message);

  async function save(e) {
    e.preventDefault();
    const text = draft.trim();
    if (!text || text === message.text) return setEditing(false);
    if (await onEdit(message, text)) setEditing(false);
  }

  return (
    <li
      className={
        'message' + (mine ? ' mine' : '') + (deleted ? ' deleted' : '') + (editing ? ' editing' : '')
      }
      data-testid="chat-message"
      data-client-id={message.clientId}
      data-serial={message.serial}
      data-action={message.action}
    >
      <Avatar name={name} picture={profile?.profileImgUrl} />
      <div className="bubble">
        <div className="meta">
          <span className="sender" data-testid="sender">
            {name}
          </span>
          <time>{timeOf(message.timestamp)}</time>
          {isEdited(message) && (
            <span className="muted tag" data-testid="edited">
              (edited)
            </span>
          )}
          {mine && !deleted && !editing && (
            <span className="actions">
              <button
                type="button"
                className="link"
                data-testid="edit"
                onClick={() => {
                  setDraft(message.text);
                  setEditing(true);
                }}
              >
                Edit
              </button>
              <button
                type="button"
                className="link danger"
                data-testid="delete"
                onClick={() => onDelete(message)}
              >
                Delete
              </button>
            </span>
          )}
        </div>
        {deleted ? (
          <div className="text muted" data-testid="chat-text">
            <em data-testid="deleted">This message was deleted</em>
          </div>
        ) : editing ? (
          <form className="edit" onSubmit={save}>
            <input
              aria-label="Edit message"
              data-testid="edit-input"
              autoFocus
              value={draft}
              onChange={(e) => setDraft(e.target.value)}
              onKeyDown={(e) => e.key === 'Escape' && setEditing(false)}
            />
            <button className="primary" type="submit" data-testid="edit-save">
              Save
            </button>
            <button type="button" className="plain" onClick={() => setEditing(false)}>
              Cancel
            </button>
          </form>
        ) : (
          <div className="text" data-testid="chat-text">
            {message.text}
          </div>
        )}
        {!deleted && <Reactions message={message} me={me} onToggle={onReact} />}
      </div>
    </li>
  );
}

export default function ChatRoom({ roomName }) {
  const { clientId: me } = useChatClient();
  const [draft, setDraft] = useState('');
  const listRef = useRef(null);

  const {
    messages,
    loaded,
    error,
    setError,
    sendMessage,
    updateMessage,
    deleteMessage,
    sendReaction,
    deleteReaction,
  } = useRoomMessages();

  // In the room while it is open (entered and left by the hook).
  usePresence();
  const { presenceData } = usePresenceListener();
  const online = useMemo(() => {
    const ids = new Set(presenceData.map((p) => p.clientId));
    return [...ids].sort((a, b) => a.localeCompare(b));
  }, [presenceData]);
  const occupancy = useRoomOccupancy(online.join('\n'));

  const { keystroke, stop, currentlyTyping } = useTyping();
  const typers = [...currentlyTyping].filter((id) => id !== me).sort();

  const profiles = useProfiles([...online, ...typers, ...messages.map((m) => m.clientId)]);

  useEffect(() => {
    const el = listRef.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [messages.length]);

  const fail = (what) => (err) => {
    setError(`${what}: ${err.message || err}`);
    return false;
  };

  function onDraft(e) {
    const text = e.target.value;
    setDraft(text);
    (text.trim() ? keystroke() : stop()).catch(() => {});
  }

  async function send(e) {
    e.preventDefault();
    const text = draft.trim();
    if (!text) return;
    setDraft('');
    stop().catch(() => {});
    try {
      await sendMessage({ text });
      setError(null);
    } catch (err) {
      setDraft(text);
      fail('Not sent')(err);
    }
  }

  const edit = (message, text) =>
    updateMessage(message.serial, { text, metadata: message.metadata, headers: message.headers }).then(
      () => true,
      fail('Not edited'),
    );
  const remove = (message) => deleteMessage(message.serial).catch(fail('Not deleted'));
  const react = (message, name, mine) =>
    (mine
      ? deleteReaction(message.serial, { type: 'distinct', name })
      : sendReaction(message.serial, { type: 'distinct', name })
    ).catch(fail('Reaction not sent'));

  return (
    <main className="room">
      <section className="conversation">
        <header className="room-header">
          <h1 data-testid="chat-room-name">💬 {roomName}</h1>
          <span className="muted">{roomName}::$chat</span>
          <span
            className="occupancy"
            data-testid="occupancy"
            data-connections={occupancy?.connections ?? ''}
            title="Connections attached to this room"
          >
            {occupancy ? `${occupancy.connections} in the room` : '…'}
          </span>
        </header>
        <ol className="messages" ref={listRef} data-testid="chat-messages">
          {!loaded && <li className="muted">Loading messages…</li>}
          {loaded && messages.length === 0 && <li className="muted">No messages yet. Say hello!</li>}
          {messages.map((m) => (
            <MessageItem
              key={m.serial}
              message={m}
              me={me}
              profiles={profiles}
              onEdit={edit}
              onDelete={remove}
              onReact={react}
            />
          ))}
        </ol>
        <div className="typing muted" data-testid="typing" aria-live="polite">
          {typingText(typers.map((id) => displayName(profiles.get(id), id)))}
        </div>
        {error && <p className="error room-error">{error}</p>}
        <form className="composer" onSubmit={send}>
          <input
            aria-label="Message"
            placeholder={`Message ${roomName}`}
            value={draft}
            onChange={onDraft}
          />
          <button className="primary" type="submit" disabled={!draft.trim()}>
            Send
          </button>
        </form>
      </section>
      <aside className="online">
        <h2>Online — {online.length}</h2>
        <ul data-testid="chat-online">
          {online.map((id) => {
            const profile = profiles.get(id);
            const name = displayName(profile, id);
            return (
              <li key={id} data-testid="chat-online-user" data-client-id={id}>
                <Avatar name={name} picture={profile?.profileImgUrl} size={28} />
                <span data-testid="online-name">{name}</span>
              </li>
            );
          })}
        </ul>
      </aside>
    </main>
  );
}
