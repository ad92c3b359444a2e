import { useEffect, useMemo, useState } from 'react';
import { AblyProvider, ChannelProvider, useConnectionStateListener } from 'ably/react';
import { ChatClient } from '@ably/chat';
import { ChatClientProvider, ChatRoomProvider } from '@ably/chat/react';
import { CHANNELS, CHAT_ROOMS, CHAT_ROOM_OPTIONS } from './config.js';
import Avatar from './Avatar.jsx';
import Room from './Room.jsx';
import ChatRoom from './ChatRoom.jsx';

function ConnectionState() {
  const [state, setState] = useState('connecting');
  useConnectionStateListener((change) => setState(change.current));
  return (
    <span className={'connection ' + state} data-testid="connection-state">
      {state}
    </span>
  );
}

// What is open: a plain channel (`useChannel`, Room.jsx) or a chat room (@ably/chat,
// ChatRoom.jsx). A chat room is kept in the address (#room=<name>), so a reload reopens it.
function viewFromHash() {
  const room = new URLSearchParams(window.location.hash.slice(1)).get('room');
  return CHAT_ROOMS.includes(room) ? { kind: 'room', name: room } : { kind: 'channel', name: CHANNELS[0] };
}

export default function Chat({ client, user, onLogout }) {
  const [view, setView] = useState(viewFromHash);
  // One ChatClient over the same realtime connection as the plain channels.
  const chatClient = useMemo(() => new ChatClient(client), [client]);

  useEffect(() => {
    const hash = view.kind === 'room' ? '#room=' + encodeURIComponent(view.name) : '';
    if (window.location.hash !== hash) {
      window.history.replaceState({}, '', window.location.pathname + window.location.search + hash);
    }
  }, [view]);

  const isOpen = (kind, name) => view.kind === kind && view.name === name;

  return (
    <AblyProvider client={client}>
      <ChatClientProvider client={chatClient}>
        <div className="chat">
          <aside className="sidebar">
            <div className="me">
              <Avatar name={user.name || user.username} picture={user.picture} />
              <div className="me-text">
                <strong data-testid="me">{user.name || user.username}</strong>
                <ConnectionState />
              </div>
              <button className="link" onClick={onLogout}>
                Log out
              </button>
            </div>
            <h2>Channels</h2>
            <nav className="channels">
              {CHANNELS.map((name) => (
                <button
                  key={name}
                  className={isOpen('channel', name) ? 'channel active' : 'channel'}
                  aria-current={isOpen('channel', name) ? 'page' : undefined}
                  onClick={() => setView({ kind: 'channel', name })}
                >
                  # {name.replace(/^chat:/, '')}
                </button>
              ))}
            </nav>
            <h2>Chat rooms</h2>
            <nav className="channels">
              {CHAT_ROOMS.map((name) => (
                <button
                  key={name}
                  className={isOpen('room', name) ? 'channel active' : 'channel'}
                  aria-current={isOpen('room', name) ? 'page' : undefined}
                  data-testid="chat-room-link"
                  onClick={() => setView({ kind: 'room', name })}
                >
                  💬 {name}
                </button>
              ))}
            </nav>
          </aside>
          {view.kind === 'room' ? (
            <ChatRoomProvider name={view.name} options={CHAT_ROOM_OPTIONS} key={'room:' + view.name}>
              <ChatRoom roomName={view.name} />
            </ChatRoomProvider>
          ) : (
            <ChannelProvider channelName={view.name} key={view.name}>
              <Room channelName={view.name} user={user} />
            </ChannelProvider>
          )}
        </div>
      </ChatClientProvider>
    </AblyProvider>
  );
}
