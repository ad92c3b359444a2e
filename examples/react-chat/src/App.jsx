import { useEffect, useState } from 'react';
import {
  auth0Client,
  auth0Realtime,
  auth0Session,
  devLogin,
  devRealtime,
  fetchOAuthConfig,
  forgetDevUser,
  rememberedDevUser,
} from './auth.js';
import Login from './Login.jsx';
import Chat from './Chat.jsx';

// Where the page starts: the login config, and the session already open (a dev user kept in
// this tab, or an Auth0 login, including the one just finished at /auth0-landing). Run once,
// even under StrictMode, because an Auth0 redirect code can be used only once.
let startPromise;
function start() {
  startPromise ??= (async () => {
    const config = await fetchOAuthConfig();
    if (config.domain) {
      const user = await auth0Session(config);
      if (!user) return { config };
      return { config, user, client: auth0Realtime(await auth0Client(config)) };
    }
    if (window.location.pathname !== '/') window.history.replaceState({}, '', '/');
    const name = config.devLogin && rememberedDevUser();
    if (!name) return { config };
    try {
      const user = await devLogin(name);
      return { config, user, client: devRealtime(name) };
    } catch {
      forgetDevUser();
      return { config };
    }
  })();
  return startPromise;
}

export default function App() {
  const [state, setState] = useState({ loading: true });

  useEffect(() => {
    let live = true;
    start().then(
      (s) => live && setState(s),
      (err) => live && setState({ error: err.message || String(err) }),
    );
    return () => {
      live = false;
    };
  }, []);

  async function loginDev(username) {
    const user = await devLogin(username);
    setState((s) => ({ config: s.config, user, client: devRealtime(username) }));
  }

  async function loginAuth0() {
    const auth0 = await auth0Client(state.config);
    await auth0.loginWithRedirect();
  }

  async function logout() {
    state.client?.close();
    if (state.user?.kind === 'auth0') {
      const auth0 = await auth0Client(state.config);
      await auth0.logout({ logoutParams: { returnTo: window.location.origin + '/' } });
      return;
    }
    forgetDevUser();
    setState((s) => ({ config: s.config }));
  }

  if (state.loading) return <div className="centered muted">Loading…</div>;
  if (state.error) return <div className="centered error">Could not start: {state.error}</div>;
  if (!state.user) {
    return <Login config={state.config} onDevLogin={loginDev} onAuth0Login={loginAuth0} />;
  }
  return <Chat client={state.client} user={state.user} onLogout={logout} />;
}
