// A local stand-in for an Auth0 tenant, for the browser test of the Auth0 login: the one part
// of the system that cannot run offline. It speaks the wire protocol @auth0/auth0-spa-js 2.x
// uses (read from its source), on a real socket on 127.0.0.1:0:
//
//   GET  /authorize            authorization code flow with PKCE (S256), response_mode=query:
//                              a login page where one picks a user, then a redirect back to
//                              redirect_uri with ?code=…&state=…
//   POST /oauth/token          grant_type=authorization_code (code_verifier checked against the
//                              challenge, redirect_uri and client_id against the code's) and
//                              grant_type=refresh_token; form-encoded or JSON; CORS for the app
//   GET  /.well-known/jwks.json, /.well-known/openid-configuration
//   GET  /v2/logout            redirects to returnTo when it is an allowed logout URL
//   GET  /avatars/{name}.svg   the users' pictures
//
// Tokens are RS256 JWTs signed with an RSA key made for this run. The access token is for the
// requested audience and carries `permissions` (RBAC) and the profile claims a Post-Login
// Action would add (the broker fills its user table from them); the ID token carries the
// OIDC profile and the nonce. Every request is recorded, so the test can check what the app
// sent.
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { createServer } from 'node:http';

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const random = () => randomBytes(24).toString('base64url');
const escapeHtml = (s) =>
  String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// Starts the mock. `users` maps a login name to its Auth0 profile ({sub, given_name,
// family_name, nickname, email, permissions}); `picture` and `name` are filled in.
export async function startMockAuth0({ clientId, audience, users }) {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = 'mock-' + random().slice(0, 8);
  const jwk = { ...publicKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' };

  const transactions = new Map(); // login-page id → the /authorize parameters
  const codes = new Map(); // code → { params, user }
  const refreshTokens = new Map(); // refresh token → { params, user }
  const allowed = { callbacks: new Set(), logouts: new Set(), origins: new Set() };
  const mock = {
    url: null,
    issuer: null,
    jwksUrl: null,
    users: {},
    authorizeRequests: [], // the query of each GET /authorize
    tokenRequests: [], // the body of each POST /oauth/token
    issued: [], // { sub, access_token, id_token, refresh_token }
    logouts: [], // the query of each GET /v2/logout
    // Registers the app like an Auth0 application's settings: allowed callback URL, logout
    // URL and web origin.
    allow({ callback, logout, origin }) {
      allowed.callbacks.add(callback);
      allowed.logouts.add(logout);
      allowed.origins.add(origin);
    },
    close: () => new Promise((r) => server.close(r)),
  };

  function jwt(claims) {
    const header = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', kid }));
    const payload = b64url(JSON.stringify(claims));
    const signature = sign('sha256', Buffer.from(`${header}.${payload}`), privateKey);
    return `${header}.${payload}.${b64url(signature)}`;
  }

  function profileClaims(user) {
    const { sub, permissions, ...profile } = user;
    return profile;
  }

  // What POST /oauth/token answers for a code or refresh token granted to `user`.
  function issue(params, user) {
    const now = Math.floor(Date.now() / 1000);
    const scope = params.scope.split(' ');
    const access_token = jwt({
      iss: mock.issuer,
      sub: user.sub,
      aud: [params.audience, mock.issuer + 'userinfo'],
      iat: now,
      exp: now + 86_400,
      azp: clientId,
      scope: scope.filter((s) => s !== 'offline_access').join(' '),
      permissions: user.permissions,
      ...profileClaims(user),
    });
    const id_token = jwt({
      iss: mock.issuer,
      sub: user.sub,
      aud: clientId,
      iat: now,
      exp: now + 36_000,
      ...(params.nonce ? { nonce: params.nonce } : {}),
      sid: random(),
      updated_at: new Date().toISOString(),
      email_verified: true,
      ...profileClaims(user),
    });
    const body = {
      access_token,
      id_token,
      scope: params.scope,
      expires_in: 86_400,
      token_type: 'Bearer',
    };
    if (scope.includes('offline_access')) {
      body.refresh_token = random();
      refreshTokens.set(body.refresh_token, { params, user });
    }
    mock.issued.push({ sub: user.sub, ...body });
    return body;
  }

  function send(res, status, body, headers = {}) {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    const type = typeof body === 'string' ? 'text/html; charset=utf-8' : 'application/json';
    res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers });
    res.end(text);
  }

  const redirect = (res, location) => {
    res.writeHead(302, { location, 'cache-control': 'no-store' });
    res.end();
  };

  // Back to the app with an OAuth error, as Auth0 does once the redirect_uri is trusted.
  function redirectError(res, params, error, description) {
    const url = new URL(params.redirect_uri);
    url.searchParams.set('error', error);
    url.searchParams.set('error_description', description);
    if (params.state) url.searchParams.set('state', params.state);
    redirect(res, url.href);
  }

  function authorize(req, res, query) {
    const params = Object.fromEntries(query);
    mock.authorizeRequests.push(params);
    if (params.client_id !== clientId) return send(res, 400, page('Unknown client.'));
    if (!allowed.callbacks.has(params.redirect_uri)) {
      return send(res, 400, page('The redirect_uri is not an allowed callback URL.'));
    }
    if ((params.response_mode || 'query') !== 'query') {
      // Silent authentication in an iframe (web_message) is what auth0-spa-js does only
      // without refresh tokens; the app uses refresh tokens, so it must never come here.
      return redirectError(res, params, 'unsupported_response_mode', 'only query is served');
    }
    if (params.response_type !== 'code') {
      return redirectError(res, params, 'unsupported_response_type', 'use response_type=code');
    }
    if (!params.code_challenge || params.code_challenge_method !== 'S256') {
      return redirectError(res, params, 'invalid_request', 'PKCE with S256 is required');
    }
    if (params.audience !== audience) {
      return redirectError(res, params, 'access_denied', `unknown audience ${params.audience}`);
    }
    if (!params.state || !params.nonce || !(params.scope || '').split(' ').includes('openid')) {
      return redirectError(res, params, 'invalid_request', 'state, nonce and openid are required');
    }
    const tx = random();
    transactions.set(tx, params);
    const buttons = Object.entries(mock.users)
      .map(
        ([login, u]) =>
          `<button name="user" value="${escapeHtml(login)}">${escapeHtml(u.name)}</button>`,
      )
      .join('\n');
    send(
      res,
      200,
      page(
        `<h1>Mock Auth0</h1><p>Log in to continue to the chat.</p>
         <form method="post" action="/u/login"><input type="hidden" name="tx" value="${tx}">
         ${buttons}</form>`,
      ),
    );
  }

  function login(res, form) {
    const params = transactions.get(form.get('tx'));
    const user = mock.users[form.get('user')];
    if (!params || !user) return send(res, 400, page('This login has expired.'));
    transactions.delete(form.get('tx'));
    const code = random();
    codes.set(code, { params, user });
    const back = new URL(params.redirect_uri);
    back.searchParams.set('code', code);
    back.searchParams.set('state', params.state);
    redirect(res, back.href);
  }

  function token(res, body, cors) {
    mock.tokenRequests.push(body);
    const fail = (status, error, error_description) =>
      send(res, status, { error, error_description }, cors);
    if (body.client_id !== clientId) return fail(401, 'access_denied', 'Unauthorized');
    if (body.grant_type === 'authorization_code') {
      const grant = codes.get(body.code);
      codes.delete(body.code); // a code is good once
      if (!grant) return fail(403, 'invalid_grant', 'Invalid authorization code');
      if (body.redirect_uri !== grant.params.redirect_uri) {
        return fail(403, 'invalid_grant', 'redirect_uri does not match the authorize request');
      }
      const challenge = body.code_verifier
        ? b64url(createHash('sha256').update(body.code_verifier).digest())
        : null;
      if (challenge !== grant.params.code_challenge) {
        return fail(403, 'invalid_grant', 'Failed to verify code verifier');
      }
      return send(res, 200, issue(grant.params, grant.user), cors);
    }
    if (body.grant_type === 'refresh_token') {
      const grant = refreshTokens.get(body.refresh_token);
      refreshTokens.delete(body.refresh_token); // rotation: each refresh token is good once
      if (!grant) return fail(403, 'invalid_grant', 'Unknown or invalid refresh token.');
      return send(res, 200, issue({ ...grant.params, nonce: undefined }, grant.user), cors);
    }
    return fail(403, 'unsupported_grant_type', `Unsupported grant type: ${body.grant_type}`);
  }

  function logout(res, query) {
    const params = Object.fromEntries(query);
    mock.logouts.push(params);
    if (params.returnTo && !allowed.logouts.has(params.returnTo)) {
      return send(res, 400, page('The returnTo URL is not an allowed logout URL.'));
    }
    if (params.returnTo) return redirect(res, params.returnTo);
    send(res, 200, page('Logged out.'));
  }

  async function readBody(req) {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const text = Buffer.concat(chunks).toString('utf8');
    if ((req.headers['content-type'] || '').startsWith('application/json')) {
      return JSON.parse(text || '{}');
    }
    return Object.fromEntries(new URLSearchParams(text));
  }

  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url, mock.url);
      const origin = req.headers.origin;
      const cors =
        origin && allowed.origins.has(origin)
          ? { 'access-control-allow-origin': origin, vary: 'Origin' }
          : {};
      const route = `${req.method} ${url.pathname}`;
      if (route === 'GET /authorize') return authorize(req, res, url.searchParams);
      if (route === 'POST /u/login') {
        return login(res, new URLSearchParams(await readBody(req)));
      }
      if (route === 'OPTIONS /oauth/token') {
        res.writeHead(204, {
          ...cors,
          'access-control-allow-methods': 'POST',
          'access-control-allow-headers': 'content-type, auth0-client',
          'access-control-max-age': '86400',
        });
        return res.end();
      }
      if (route === 'POST /oauth/token') return token(res, await readBody(req), cors);
      if (route === 'GET /.well-known/jwks.json') return send(res, 200, { keys: [jwk] }, cors);
      if (route === 'GET /.well-known/openid-configuration') {
        return send(
          res,
          200,
          {
            issuer: mock.issuer,
            authorization_endpoint: mock.url + '/authorize',
            token_endpoint: mock.url + '/oauth/token',
            jwks_uri: mock.jwksUrl,
            end_session_endpoint: mock.url + '/v2/logout',
            response_types_supported: ['code'],
            response_modes_supported: ['query'],
            code_challenge_methods_supported: ['S256'],
            id_token_signing_alg_values_supported: ['RS256'],
            subject_types_supported: ['public'],
          },
          cors,
        );
      }
      if (route === 'GET /v2/logout') return logout(res, url.searchParams);
      const avatar = /^GET \/avatars\/([a-z]+)\.svg$/.exec(route);
      if (avatar && mock.users[avatar[1]]) {
        res.writeHead(200, { 'content-type': 'image/svg+xml' });
        return res.end(avatarSvg(mock.users[avatar[1]]));
      }
      send(res, 404, { error: 'not_found', error_description: route });
    } catch (err) {
      send(res, 500, { error: 'server_error', error_description: String(err) });
    }
  });

  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  mock.url = `http://127.0.0.1:${server.address().port}`;
  mock.issuer = mock.url + '/';
  mock.jwksUrl = mock.url + '/.well-known/jwks.json';
  for (const [login, user] of Object.entries(users)) {
    mock.users[login] = {
      ...user,
      name: `${user.given_name} ${user.family_name}`,
      picture: `${mock.url}/avatars/${login}.svg`,
    };
  }
  return mock;
}

function page(body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Mock Auth0</title>
<style>body{font:16px system-ui;margin:60px auto;max-width:360px}button{display:block;width:100%;
margin:8px 0;padding:10px;font-size:16px}</style></head><body>${body}</body></html>`;
}

function avatarSvg(user) {
  const letter = escapeHtml(user.given_name[0]);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">
<rect width="64" height="64" fill="#0e7490"/><text x="32" y="42" font-size="30" fill="#fff"
text-anchor="middle" font-family="sans-serif">${letter}</text></svg>`;
}
