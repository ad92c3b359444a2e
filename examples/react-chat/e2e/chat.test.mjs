// Browser end-to-end test of the chat app on a real broker, in real Chromium, with the
// development login (no Auth0; auth0.test.mjs drives the Auth0 login).
//
//   npm run build --prefix examples/react-chat
//   BROKER_BIN=target/release/broker node --test examples/react-chat/e2e/
//
// Two users log in with the development login, see each other online, exchange messages, one
// reloads and finds the history, one leaves and the other sees it go. Names come from the
// broker's profile route (/api/users/{id}/profile), which answers for development users with
// the name they logged in with. Screenshots are saved in e2e/artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  LEAVE_TIMEOUT,
  TIMEOUT,
  artifacts,
  checkPrerequisites,
  devLogin,
  eventually,
  launchBrowser,
  messageTexts,
  onlineNames,
  onlineUsers,
  send,
  startBroker,
  waitConnected,
} from './support.mjs';

let broker;
let baseUrl;
let browser;

before(async () => {
  checkPrerequisites();
  broker = await startBroker();
  baseUrl = broker.url;
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await broker?.stop();
});

async function openUser(username) {
  return devLogin(browser, baseUrl, username, 1100);
}

test('two users chat in the browser: presence, ordered messages, history, leave', async () => {
  const alice = await openUser('Alice');
  const bob = await openUser('bob_e2e');

  // The dev login normalises names: Alice is "alice".
  assert.equal(await alice.page.getByTestId('me').textContent(), 'alice');

  // Both see both online, named by their profiles on the broker.
  for (const { page } of [alice, bob]) {
    await eventually(async () => assert.deepEqual(await onlineUsers(page), ['alice', 'bob_e2e']));
    await eventually(async () => assert.deepEqual(await onlineNames(page), ['alice', 'bob_e2e']));
  }

  // Messages from both sides appear on both, in the order sent.
  const expected = [];
  for (let i = 1; i <= 3; i++) {
    await send(alice.page, `hello from alice ${i}`);
    expected.push(['alice', `hello from alice ${i}`]);
    await eventually(async () => assert.deepEqual(await messageTexts(bob.page), expected));
    await send(bob.page, `reply from bob ${i}`);
    expected.push(['bob_e2e', `reply from bob ${i}`]);
    await eventually(async () => assert.deepEqual(await messageTexts(alice.page), expected));
  }
  for (const { page } of [alice, bob]) {
    await eventually(async () => assert.deepEqual(await messageTexts(page), expected));
  }
  // Initials avatars are shown when there is no picture.
  assert.equal(
    await alice.page.locator('[data-testid="message"] .avatar').first().textContent(),
    'AL',
  );
  await alice.page.screenshot({ path: join(artifacts, 'alice-chat.png') });
  await bob.page.screenshot({ path: join(artifacts, 'bob-chat.png') });

  // Another channel is empty, and its messages stay there.
  await bob.page.getByRole('button', { name: '# random' }).click();
  await bob.page.getByTestId('room-name').filter({ hasText: '#random' }).waitFor();
  await bob.page.getByText('No messages yet').waitFor();
  await send(bob.page, 'only in random');
  await eventually(async () =>
    assert.deepEqual(await messageTexts(bob.page), [['bob_e2e', 'only in random']]),
  );
  await bob.page.getByRole('button', { name: '# general' }).click();
  await eventually(async () => assert.deepEqual(await messageTexts(bob.page), expected));
  assert.deepEqual(await messageTexts(alice.page), expected);

  // Bob reloads: still logged in, and the history is back.
  await bob.page.reload();
  await waitConnected(bob.page);
  await eventually(async () => assert.deepEqual(await messageTexts(bob.page), expected));
  await eventually(async () => assert.deepEqual(await onlineUsers(bob.page), ['alice', 'bob_e2e']));
  await send(bob.page, 'back after reload');
  expected.push(['bob_e2e', 'back after reload']);
  await eventually(async () => assert.deepEqual(await messageTexts(alice.page), expected));
  await bob.page.screenshot({ path: join(artifacts, 'bob-after-reload.png') });

  // Bob closes the window: Alice sees him leave.
  // Like a person closing the tab: the page's unload handlers run (ably-js closes the
  // connection on unload, so the broker sends the leave at once).
  await bob.page.close({ runBeforeUnload: true });
  await eventually(async () => assert.deepEqual(await onlineUsers(alice.page), ['alice']), LEAVE_TIMEOUT);
  await bob.context.close();
  await alice.page.screenshot({ path: join(artifacts, 'alice-after-bob-left.png') });

  await alice.context.close();
});

test('the login page offers the development login and SPA paths fall back to the app', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  await page.goto(baseUrl + '/auth0-landing');
  await page.getByText('Development login — Auth0 is not configured').waitFor();
  assert.equal(new URL(page.url()).pathname, '/');
  await page.screenshot({ path: join(artifacts, 'login.png') });
  await context.close();
});
