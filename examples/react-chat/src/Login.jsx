import { useState } from 'react';

export default function Login({ config, onDevLogin, onAuth0Login }) {
  const auth0 = Boolean(config?.domain);
  const [username, setUsername] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  async function submit(e) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await onDevLogin(username.trim());
    } catch (err) {
      setError(err.message || String(err));
      setBusy(false);
    }
  }

  return (
    <div className="centered">
      <div className="login-card">
        <h1>Chat</h1>
        {auth0 ? (
          <>
            <p className="muted">Sign in with your account to join the conversation.</p>
            <button className="primary" onClick={onAuth0Login}>
              Log in
            </button>
            <p className="note">Auth0 is configured, so the development login is not offered.</p>
          </>
        ) : config?.devLogin ? (
          <form onSubmit={submit}>
            <p className="note">Development login — Auth0 is not configured</p>
            <label htmlFor="username">Username</label>
            <input
              id="username"
              name="username"
              autoFocus
              autoComplete="username"
              placeholder="3–32 letters, digits, . _ -"
              value={username}
              onChange={(e) => setUsername(e.target.value)}
            />
            <button className="primary" type="submit" disabled={busy || username.trim() === ''}>
              Enter chat
            </button>
            {error && <p className="error">{error}</p>}
          </form>
        ) : (
          <p className="error">
            No login is available: this broker has neither Auth0 nor the development login
            turned on.
          </p>
        )}
      </div>
    </div>
  );
}
