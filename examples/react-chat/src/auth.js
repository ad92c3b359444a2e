import * as Ably from 'ably';
import { createAuth0Client } from '@auth0/auth0-spa-js';
import { brokerLocation } from './config.js';

const DEV_USER_KEY = 'react-chat.devUser';

export async function fetchOAuthConfig() {
  const res = await fetch('/api/oauth/config');
  if (!res.ok) return { devLogin: false };
  return res.json();
}

function realtimeOptions(auth) {
  const { hostname, port, tls } = brokerLocation();
  return {
    ...auth,
    endpoint: hostname,
    port,
    tlsPort: port,
    tls,
    useBinaryProtocol: false,
    disableConnectivityCheck: true,
    fallbackHosts: [],
    transports: ['web_socket'],
  };
}

// --- development login -------------------------------------------------------------------

export function rememberedDevUser() {
  return sessionStorage.getItem(DEV_USER_KEY);
}

export function forgetDevUser() {
  sessionStorage.removeItem(DEV_USER_KEY);
}

// Checks the name with the broker (which normalises it) and returns the user.
export async function devLogin(username) {
  const res = await fetch('/api/dev/login?username=' + encodeURIComponent(username));
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    throw new Error(body.error?.message || body.message || `login failed (${res.status})`);
  }
  sessionStorage.setItem(DEV_USER_KEY, username);
  return { id: body.clientId, username: body.clientId, kind: 'dev' };
}

export function devRealtime(username) {
  return new Ably.Realtime(
    realtimeOptions({ authUrl: '/api/dev/login?username=' + encodeURIComponent(username) }),
  );
}

// --- Auth0 -------------------------------------------------------------------------------

let auth0Promise;

export function auth0Client(config) {
  auth0Promise ??= createAuth0Client({
    domain: config.domain,
    clientId: config.clientId || config.client_id || config.clientID,
    authorizationParams: {
      redirect_uri: config.redirect_uri || window.location.origin + '/auth0-landing',
      ...(config.audience ? { audience: config.audience } : {}),
    },
    cacheLocation: 'localstorage',
    useRefreshTokens: true,
  });
  return auth0Promise;
}

// After the redirect back from Auth0 (/auth0-landing), or on a later visit: the signed-in user,
// or null.
export async function auth0Session(config) {
  const auth0 = await auth0Client(config);
  if (window.location.pathname === '/auth0-landing') {
    const params = new URLSearchParams(window.location.search);
    if (params.has('code') && params.has('state')) {
      await auth0.handleRedirectCallback();
    }
    window.history.replaceState({}, '', '/');
  }
  if (!(await auth0.isAuthenticated())) return null;
  const token = await auth0.getTokenSilently();
  const res = await fetch('/api/users/me', { headers: { Authorization: 'Bearer ' + token } });
  if (!res.ok) throw new Error(`could not load your profile (${res.status})`);
  const me = await res.json();
  return {
    id: me.id,
    username: me.username,
    name: [me.firstName, me.lastName].filter(Boolean).join(' ') || me.username,
    picture: me.profileImgUrl || null,
    kind: 'auth0',
  };
}

export function auth0Realtime(auth0) {
  // The Auth0 token is fetched fresh (silently) whenever ably-js needs a new broker token.
  return new Ably.Realtime(
    realtimeOptions({
      authCallback: async (_params, callback) => {
        try {
          const token = await auth0.getTokenSilently();
          const res = await fetch('/api/auth/token', {
            headers: { Authorization: 'Bearer ' + token },
          });
          if (!res.ok) throw new Error(`token request failed (${res.status})`);
          callback(null, await res.json());
        } catch (err) {
          callback(err.message || String(err), null);
        }
      },
    }),
  );
}
