// Browser end-to-end test of the chat app's Auth0 login, in real Chromium against the real
// broker binary, with a mock Auth0 tenant (mock-auth0.mjs) on 127.0.0.1:0 — Auth0 itself is
// the only thing not real here.
//
//   npm run build --prefix examples/react-chat
//   BROKER_BIN=target/release/broker node --test examples/react-chat/e2e/
//
// The broker runs as on a fresh machine (no API key configured, so the development login
// would be on), with AUTH0_DOMAIN set to the mock's URL (auth0-spa-js accepts a domain with a
// scheme, which is how it reaches a plain-http issuer), AUTH0_ISSUER and AUTH0_JWKS_URL
// pointing at the mock. Two users log in through the mock's login page (PKCE code flow),
// land on /auth0-landing and then in the chat; the Auth0 access token goes to
// /api/auth/token and the broker token it buys to the WebSocket. They see each other online
// under the names and pictures of their Auth0 profiles (from the broker's user table via
// /api/users/{id}/profile), exchange messages, one reloads and stays logged in, and one logs
// out through the tenant's /v2/logout back to /. Screenshots are saved in e2e/artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startMockAuth0 } from './mock-auth0.mjs';
import {
  TIMEOUT,
  artifacts,
  checkPrerequisites,
  eventually,
  launchBrowser,
  messageTexts,
  onlineNames,
  onlineUsers,
  send,
  startBroker,
  waitConnected,
} from './support.mjs';

const CLIENT_ID = 'e2e-spa-client';
const AUDIENCE = 'https://chat-broker.e2e';
const CHAT_USER = ['subscribe', 'publish', 'presence', 'history'].map((op) => `${op}:chat:*`);

let mock;
let broker;
let browser;

before(async () => {
  checkPrerequisites();
  mock = await startMockAuth0({
    clientId: CLIENT_ID,
    audience: AUDIENCE,
    users: {
      ada: {
        sub: 'auth0|65f1c0ffee0ada',
        nickname: 'ada',
        given_name: 'Ada',
        family_name: 'Lovelace',
        email: 'ada@example.com',
        permissions: CHAT_USER,
      },
      grace: {
        sub: 'google-oauth2|108377465512345678',
        nickname: 'grace.hopper',
        given_name: 'Grace',
        family_name: 'Hopper',
        email: 'grace@example.com',
        permissions: CHAT_USER,
      },
    },
  });
  broker = await startBroker({
    AUTH0_DOMAIN: mock.url,
    AUTH0_CLIENTID: CLIENT_ID,
    AUTH0_AUDIENCE: AUDIENCE,
    AUTH0_ISSUER: mock.issuer,
    AUTH0_JWKS_URL: mock.jwksUrl,
  });
  // The application's settings at the tenant: the app's own callback, logout URL and origin.
  mock.allow({
    callback: broker.url + '/auth0-landing',
    logout: broker.url + '/',
    origin: broker.url,
  });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await broker?.stop();
  await mock?.close();
});

const path = (url) => new URL(url).pathname;
const jwtClaims = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());

// The broker's REST API with the development key it created (Auth0 is on, so it is only an
// API key here).
async function admin(route) {
  const res = await fetch(broker.url + route, {
    headers: { authorization: 'Basic ' + Buffer.from(broker.devKey).toString('base64') },
  });
  assert.equal(res.status, 200, `${route}: ${res.status}`);
  return res.json();
}

// Opens a browser window on the app and logs `login` in through the mock's login page.
// Records what the page did on the way: the URLs it loaded, the Authorization it sent to
// /api/auth/token, the broker tokens it got back, and its WebSocket URLs.
async function logIn(login, { screenshots = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (err) => console.error(`[${login}] page error:`, err.message));
  const seen = { urls: [], tokenAuth: [], brokerTokens: [], sockets: [] };
  page.on('request', (request) => {
    // Every URL the window loads, redirects included.
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      seen.urls.push(request.url());
    }
    if (path(request.url()) === '/api/auth/token') {
      seen.tokenAuth.push(request.allHeaders().then((h) => h.authorization));
    }
  });
  page.on('response', (response) => {
    if (path(response.url()) === '/api/auth/token' && response.ok()) {
      seen.brokerTokens.push(response.json().then((details) => details.token));
    }
  });
  page.on('websocket', (ws) => seen.sockets.push(ws.url()));

  await page.goto(broker.url + '/');
  await page.getByRole('button', { name: 'Log in' }).waitFor();
  // Auth0 is on: the development login is not offered, though this broker runs on its
  // development key.
  await page.getByText('Auth0 is configured, so the development login is not offered.').waitFor();
  assert.equal(await page.getByLabel('Username').count(), 0);
  if (screenshots) await page.screenshot({ path: join(artifacts, 'auth0-login.png') });

  await page.getByRole('button', { name: 'Log in' }).click();
  await page.waitForURL((url) => url.href.startsWith(mock.url + '/authorize?'));
  await page.getByRole('heading', { name: 'Mock Auth0' }).waitFor();
  if (screenshots) await page.screenshot({ path: join(artifacts, 'auth0-mock-login-page.png') });
  await page.getByRole('button', { name: mock.users[login].name }).click();
  await waitConnected(page);
  return { context, page, seen, user: mock.users[login] };
}

// Checks the login went the way auth0-spa-js does it and the tokens went where they belong.
async function checkLoginFlow({ page, seen, user }) {
  // Back from the tenant on /auth0-landing with a code, then the app cleans the URL to /.
  const landing = seen.urls.map((u) => new URL(u)).find((u) => u.pathname === '/auth0-landing');
  assert.ok(landing, `no /auth0-landing in ${seen.urls.join(' → ')}`);
  assert.equal(landing.origin, broker.url);
  assert.equal(new URL(page.url()).href, broker.url + '/');

  // What the app asked /authorize for.
  const state = landing.searchParams.get('state');
  const authorize = mock.authorizeRequests.find((p) => p.state === state);
  assert.ok(authorize, 'the state came back unchanged');
  assert.equal(authorize.client_id, CLIENT_ID);
  assert.equal(authorize.response_type, 'code');
  assert.equal(authorize.response_mode, 'query');
  assert.equal(authorize.code_challenge_method, 'S256');
  assert.match(authorize.code_challenge, /^[A-Za-z0-9_-]{43}$/);
  assert.ok(authorize.nonce);
  assert.equal(authorize.audience, AUDIENCE);
  assert.equal(authorize.redirect_uri, broker.url + '/auth0-landing');
  for (const scope of ['openid', 'profile', 'email', 'offline_access']) {
    assert.ok(authorize.scope.split(' ').includes(scope), `${authorize.scope} lacks ${scope}`);
  }
  // The code was redeemed once, with the PKCE verifier (the mock checks it).
  const redeemed = mock.tokenRequests.filter((b) => b.code === landing.searchParams.get('code'));
  assert.equal(redeemed.length, 1);
  assert.equal(redeemed[0].grant_type, 'authorization_code');
  assert.ok(redeemed[0].code_verifier);

  // The Auth0 access token went to /api/auth/token, and the broker token it bought to the
  // WebSocket, for this user's id.
  const accessTokens = new Set(
    mock.issued.filter((t) => t.sub === user.sub).map((t) => t.access_token),
  );
  const sent = await Promise.all(seen.tokenAuth);
  assert.ok(sent.length >= 1, 'the app asked /api/auth/token');
  for (const authorization of sent) {
    assert.ok(accessTokens.has(authorization.replace(/^Bearer /, '')), "this user's access token");
  }
  const brokerTokens = await Promise.all(seen.brokerTokens);
  const socketTokens = seen.sockets.map((u) => new URL(u).searchParams.get('access_token'));
  assert.ok(socketTokens.length >= 1 && socketTokens.every((t) => brokerTokens.includes(t)));
  const users = (await admin('/api/users')).users;
  const row = users.find((u) => u.oauthSub === user.sub);
  assert.ok(row, 'the first login created the user');
  assert.equal(jwtClaims(socketTokens[0])['x-ably-clientId'], row.id);
  return row;
}

test('two users log in with Auth0, chat under their profile names, and log out', async () => {
  const ada = await logIn('ada', { screenshots: true });
  const adaRow = await checkLoginFlow(ada);
  const grace = await logIn('grace');
  const graceRow = await checkLoginFlow(grace);

  // The user table took the names and pictures from the Auth0 profile; the profile route
  // shows them (and no sub) to anyone signed in.
  assert.deepEqual(await admin(`/api/users/${adaRow.id}/profile`), {
    id: adaRow.id,
    username: 'ada',
    firstName: 'Ada',
    lastName: 'Lovelace',
    profileImgUrl: mock.users.ada.picture,
  });
  assert.equal(await ada.page.getByTestId('me').textContent(), 'Ada Lovelace');
  assert.equal(await grace.page.getByTestId('me').textContent(), 'Grace Hopper');

  // Both see both online, under their profile names; clientIds are the users' ids.
  const byId = [
    [adaRow.id, 'Ada Lovelace'],
    [graceRow.id, 'Grace Hopper'],
  ].sort(([a], [b]) => a.localeCompare(b));
  for (const { page } of [ada, grace]) {
    await eventually(async () => assert.deepEqual(await onlineUsers(page), byId.map(([id]) => id)));
    await eventually(async () =>
      assert.deepEqual(await onlineNames(page), byId.map(([, name]) => name)),
    );
  }

  // Messages both ways, in order, with the senders' names and pictures.
  const expected = [];
  for (const [from, to, text] of [
    [ada, grace, 'Hello from Ada'],
    [grace, ada, 'Hi Ada, Grace here'],
    [ada, grace, 'Shall we compute some Bernoulli numbers?'],
  ]) {
    await send(from.page, text);
    expected.push([from.user.name, text]);
    await eventually(async () => assert.deepEqual(await messageTexts(to.page), expected));
  }
  for (const { page } of [ada, grace]) {
    await eventually(async () => assert.deepEqual(await messageTexts(page), expected));
  }
  const adaMessage = grace.page
    .locator(`[data-testid="message"][data-client-id="${adaRow.id}"]`)
    .first();
  assert.equal(await adaMessage.locator('img.avatar').getAttribute('src'), mock.users.ada.picture);
  assert.equal(await adaMessage.locator('.username').textContent(), '@ada');
  const graceAvatar = ada.page.locator(
    `[data-testid="online-user"][data-client-id="${graceRow.id}"] img.avatar`,
  );
  assert.equal(await graceAvatar.getAttribute('src'), mock.users.grace.picture);
  await eventually(async () =>
    assert.ok(await graceAvatar.evaluate((img) => img.complete && img.naturalWidth > 0)),
  );
  await ada.page.screenshot({ path: join(artifacts, 'auth0-ada-chat.png') });
  await grace.page.screenshot({ path: join(artifacts, 'auth0-grace-chat.png') });

  // Grace reloads: the session is kept (no new /authorize), and the history is back.
  const authorizeCount = mock.authorizeRequests.length;
  await grace.page.reload();
  await waitConnected(grace.page);
  await eventually(async () => assert.deepEqual(await messageTexts(grace.page), expected));
  assert.equal(mock.authorizeRequests.length, authorizeCount);

  // Ada logs out: through the tenant's /v2/logout back to /, logged out, and gone from
  // Grace's online list.
  await ada.page.getByRole('button', { name: 'Log out' }).click();
  await ada.page.waitForURL(broker.url + '/');
  await ada.page.getByRole('button', { name: 'Log in' }).waitFor();
  const logout = mock.logouts.at(-1);
  assert.equal(logout.client_id, CLIENT_ID);
  assert.equal(logout.returnTo, broker.url + '/');
  assert.ok(ada.seen.urls.some((u) => u.startsWith(mock.url + '/v2/logout?')));
  const leftover = await ada.page.evaluate(() =>
    Object.keys(localStorage).filter((k) => k.startsWith('@@auth0spajs@@')),
  );
  assert.deepEqual(leftover, [], 'no tokens left in the browser');
  await eventually(async () => assert.deepEqual(await onlineNames(grace.page), ['Grace Hopper']));
  await ada.page.screenshot({ path: join(artifacts, 'auth0-after-logout.png') });
  await grace.page.screenshot({ path: join(artifacts, 'auth0-grace-after-ada-left.png') });

  await ada.context.close();
  await grace.context.close();
});

test('with Auth0 configured the broker refuses the development login', async () => {
  const config = await (await fetch(broker.url + '/api/oauth/config')).json();
  assert.equal(config.domain, mock.url);
  assert.equal(config.audience, AUDIENCE);
  assert.equal(config.devLogin, undefined);
  const refused = await fetch(broker.url + '/api/dev/login?username=ada');
  assert.equal(refused.status, 404);
  assert.equal((await refused.json()).error.code, 40400);
});
