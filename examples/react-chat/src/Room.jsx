import { useEffect, useMemo, useRef, useState } from 'react';
import { useChannel, usePresence, usePresenceListener } from 'ably/react';
import { HISTORY_LIMIT } from './config.js';
import Avatar from './Avatar.jsx';
import { displayName, useProfiles } from './profiles.js';

const keyOf = (m) => m.id || `${m.clientId}/${m.timestamp}/${JSON.stringify(m.data)}`;
const textOf = (m) => (typeof m.data === 'string' ? m.data : (m.data?.text ?? JSON.stringify(m.data)));
const timeOf = (m) =>
  m.timestamp
    ? new Date(m.timestamp).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : '';

export default function Room({ channelName, user }) {
  const [history, setHistory] = useState(null);
  const [live, setLive] = useState([]);
  const [draft, setDraft] = useState('');
  const [error, setError] = useState(null);
  const listRef = useRef(null);

  const { channel, publish } = useChannel(channelName, 'message', (message) => {
    setLive((prev) => [...prev, message]);
  });

  // Enter presence while the room is open. Others show us by our profile on the broker, not
  // by anything we put here.
  usePresence(channelName);
  const { presenceData } = usePresenceListener(channelName);

  // Earlier messages: read once the channel is attached, so that everything published after
  // the read arrives through the subscription (duplicates are dropped by id below).
  useEffect(() => {
    let live = true;
    (async () => {
      try {
        await channel.attach();
        const page = await channel.history({ limit: HISTORY_LIMIT, direction: 'backwards' });
        if (live) setHistory([...page.items].reverse());
      } catch (err) {
        if (live) {
          setHistory([]);
          setError('Could not load earlier messages: ' + (err.message || err));
        }
      }
    })();
    return () => {
      live = false;
    };
  }, [channel]);

  const online = useMemo(() => {
    const byClient = new Map();
    for (const p of presenceData) {
      if (!byClient.has(p.clientId)) byClient.set(p.clientId, p);
    }
    return [...byClient.values()].sort((a, b) => a.clientId.localeCompare(b.clientId));
  }, [presenceData]);

  const messages = useMemo(() => {
    const seen = new Set();
    const out = [];
    for (const m of [...(history || []), ...live]) {
      const k = keyOf(m);
      if (seen.has(k)) continue;
      seen.add(k);
      out.push(m);
    }
    return out;
  }, [history, live]);

  const profiles = useProfiles([
    ...online.map((p) => p.clientId),
    ...messages.map((m) => m.clientId),
  ]);

  useEffect(() => {
    const el = listRef.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [messages.length]);

  async function send(e) {
    e.preventDefault();
    const text = draft.trim();
    if (!text) return;
    setDraft('');
    try {
      await publish('message', text);
      setError(null);
    } catch (err) {
      setDraft(text);
      setError('Not sent: ' + (err.message || err));
    }
  }

  return (
    <main className="room">
      <section className="conversation">
        <header className="room-header">
          <h1 data-testid="room-name">#{channelName.replace(/^chat:/, '')}</h1>
          <span className="muted">{channelName}</span>
        </header>
        <ol className="messages" ref={listRef} data-testid="messages">
          {history === null && <li className="muted">Loading messages…</li>}
          {history !== null && messages.length === 0 && (
            <li className="muted">No messages yet. Say hello!</li>
          )}
          {messages.map((m) => {
            const profile = profiles.get(m.clientId);
            const name = displayName(profile, m.clientId);
            return (
              <li
                key={keyOf(m)}
                className={m.clientId === user.id ? 'message mine' : 'message'}
                data-testid="message"
                data-client-id={m.clientId}
              >
                <Avatar name={name} picture={profile?.profileImgUrl} />
                <div className="bubble">
                  <div className="meta">
                    <span className="sender" data-testid="sender">
                      {name}
                    </span>
                    {profile && name !== profile.username && (
                      <span className="username muted">@{profile.username}</span>
                    )}
                    <time>{timeOf(m)}</time>
                  </div>
                  <div className="text" data-testid="text">
                    {textOf(m)}
                  </div>
                </div>
              </li>
            );
          })}
        </ol>
        {error && <p className="error room-error">{error}</p>}
        <form className="composer" onSubmit={send}>
          <input
            aria-label="Message"
            placeholder={`Message #${channelName.replace(/^chat:/, '')}`}
            value={draft}
            onChange={(e) => setDraft(e.target.value)}
          />
          <button className="primary" type="submit" disabled={!draft.trim()}>
            Send
          </button>
        </form>
      </section>
      <aside className="online">
        <h2>Online — {online.length}</h2>
        <ul data-testid="online">
          {online.map((p) => {
            const profile = profiles.get(p.clientId);
            const name = displayName(profile, p.clientId);
            return (
              <li key={p.clientId} data-testid="online-user" data-client-id={p.clientId}>
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
