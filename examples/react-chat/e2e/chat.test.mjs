// Browser end-to-end test of the chat app on a real broker, in real Chromium.
//
//   npm run build --prefix examples/react-chat
//   BROKER_BIN=target/release/broker node --test examples/react-chat/e2e/
//
// Two users log in with the development login, see each other online, exchange messages, one
// reloads and finds the history, one leaves and the other sees it go. Screenshots are saved in
// e2e/artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const appDir = resolve(here, '..');
const webRoot = join(appDir, 'dist');
const artifacts = join(here, 'artifacts');
const brokerBin = process.env.BROKER_BIN || '/work/main/target/release/broker';
const chromiumPath = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const TIMEOUT = 20_000; // safety limit of each wait; the waits end as soon as the page is right
// A window closed without a goodbye leaves presence when the broker notices the socket is gone.
const LEAVE_TIMEOUT = 60_000;

let broker;
let baseUrl;
let dataDir;
let browser;
let brokerLog = '';

function startBroker() {
  return new Promise((resolveStart, rejectStart) => {
    dataDir = mkdtempSync(join(tmpdir(), 'react-chat-e2e-'));
    broker = spawn(
      brokerBin,
      ['--listen', '127.0.0.1:0', '--data-dir', join(dataDir, 'data'), '--web-root', webRoot],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const timer = setTimeout(() => rejectStart(new Error('broker did not start:\n' + brokerLog)), 15_000);
    broker.on('error', (err) => {
      clearTimeout(timer);
      rejectStart(err);
    });
    broker.on('exit', (code) => {
      clearTimeout(timer);
      rejectStart(new Error(`broker exited (${code}):\n${brokerLog}`));
    });
    broker.stderr.on('data', (d) => (brokerLog += d));
    broker.stdout.on('data', (d) => {
      brokerLog += d;
      const m = /listening on (http:\/\/\S+)/.exec(brokerLog);
      if (m && !baseUrl) {
        baseUrl = m[1];
        clearTimeout(timer);
        resolveStart();
      }
    });
  });
}

before(async () => {
  assert.ok(existsSync(join(webRoot, 'index.html')), `build the app first: ${webRoot} is missing`);
  assert.ok(existsSync(brokerBin), `broker binary not found at ${brokerBin} (set BROKER_BIN)`);
  assert.ok(existsSync(chromiumPath), `Chromium not found at ${chromiumPath}`);
  mkdirSync(artifacts, { recursive: true });
  await startBroker();
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close().catch(() => {});
  if (broker && broker.exitCode === null) {
    broker.removeAllListeners('exit');
    const exited = new Promise((r) => broker.once('exit', r));
    broker.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    if (broker.exitCode === null) broker.kill('SIGKILL');
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

// Polls fn until it returns without throwing, or fails with its last error after the timeout.
async function eventually(fn, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  for (let delay = 25; ; delay = Math.min(delay * 2, 250)) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

async function openUser(username) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (err) => console.error(`[${username}] page error:`, err.message));
  await page.goto(baseUrl + '/');
  await page.getByText('Development login — Auth0 is not configured').waitFor();
  await page.getByLabel('Username').fill(username);
  await page.getByRole('button', { name: 'Enter chat' }).click();
  await waitConnected(page);
  return { context, page };
}

async function waitConnected(page) {
  await page.locator('[data-testid="connection-state"].connected').waitFor();
  await page.getByTestId('room-name').filter({ hasText: '#general' }).waitFor();
}

const onlineUsers = (page) =>
  page.locator('[data-testid="online-user"]').evaluateAll((els) =>
    els.map((e) => e.getAttribute('data-client-id')),
  );

const messageTexts = (page) =>
  page.locator('[data-testid="message"]').evaluateAll((els) =>
    els.map((e) => [
      e.querySelector('[data-testid="sender"]').textContent,
      e.querySelector('[data-testid="text"]').textContent,
    ]),
  );

async function send(page, text) {
  const box = page.getByLabel('Message');
  await box.fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
  await eventually(async () => assert.equal(await box.inputValue(), ''));
}

test('two users chat in the browser: presence, ordered messages, history, leave', async () => {
  const alice = await openUser('Alice');
  const bob = await openUser('bob_e2e');

  // The dev login normalises names: Alice is "alice".
  assert.equal(await alice.page.getByTestId('me').textContent(), 'alice');

  // Both see both online.
  for (const { page } of [alice, bob]) {
    await eventually(async () => assert.deepEqual(await onlineUsers(page), ['alice', 'bob_e2e']));
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
