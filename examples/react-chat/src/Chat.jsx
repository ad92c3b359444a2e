import { useState } from 'react';
import { AblyProvider, ChannelProvider, useConnectionStateListener } from 'ably/react';
import { CHANNELS } from './config.js';
import Avatar from './Avatar.jsx';
import Room from './Room.jsx';

function ConnectionState() {
  const [state, setState] = useState('connecting');
  useConnectionStateListener((change) => setState(change.current));
  return (
    <span className={'connection ' + state} data-testid="connection-state">
      {state}
    </span>
  );
}

export default function Chat({ client, user, onLogout }) {
  const [channel, setChannel] = useState(CHANNELS[0]);

  return (
    <AblyProvider client={client}>
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
                className={name === channel ? 'channel active' : 'channel'}
                aria-current={name === channel ? 'page' : undefined}
                onClick={() => setChannel(name)}
              >
                # {name.replace(/^chat:/, '')}
              </button>
            ))}
          </nav>
        </aside>
        <ChannelProvider channelName={channel} key={channel}>
          <Room channelName={channel} user={user} />
        </ChannelProvider>
      </div>
    </AblyProvider>
  );
}
