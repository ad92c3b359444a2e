// What the browser tests share: the real broker binary on 127.0.0.1:0 with a fresh data
// directory, headless Chromium, and ways to wait for and read the chat page. Not a test file
// itself (node --test runs only *.test.mjs).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const webRoot = join(resolve(here, '..'), 'dist');
export const artifacts = join(here, 'artifacts');
const brokerBin = process.env.BROKER_BIN || '/work/main/target/release/broker';
const chromiumPath = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const TIMEOUT = 20_000; // safety limit of each wait; the waits end as soon as the page is right
// A window closed without a goodbye leaves presence when the broker notices the socket is gone.
export const LEAVE_TIMEOUT = 60_000;

// Fails early, with a useful message, when something the tests need is missing.
export function checkPrerequisites() {
  assert.ok(existsSync(join(webRoot, 'index.html')), `build the app first: ${webRoot} is missing`);
  assert.ok(existsSync(brokerBin), `broker binary not found at ${brokerBin} (set BROKER_BIN)`);
  assert.ok(existsSync(chromiumPath), `Chromium not found at ${chromiumPath}`);
  mkdirSync(artifacts, { recursive: true });
}

// Starts the broker binary serving the built app, with `env` added to an environment cleared
// of any BROKER_* and AUTH0_* settings of the caller. Resolves once it prints where it listens.
export function startBroker(env = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'react-chat-e2e-'));
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/^(BROKER|AUTH0)_/.test(k)),
  );
  const child = spawn(
    brokerBin,
    ['--listen', '127.0.0.1:0', '--data-dir', join(dataDir, 'data'), '--web-root', webRoot],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...inherited, ...env } },
  );
  const broker = { child, dataDir, url: null, devKey: null, log: '' };
  broker.stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.removeAllListeners('exit');
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    rmSync(dataDir, { recursive: true, force: true });
  };
  return new Promise((resolveStart, rejectStart) => {
    const timer = setTimeout(
      () => rejectStart(new Error('broker did not start:\n' + broker.log)),
      15_000,
    );
    child.on('error', (err) => {
      clearTimeout(timer);
      rejectStart(err);
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      rejectStart(new Error(`broker exited (${code}):\n${broker.log}`));
    });
    child.stderr.on('data', (d) => (broker.log += d));
    child.stdout.on('data', (d) => {
      broker.log += d;
      broker.devKey ??= /development API key \(stored in .*\): (\S+)/.exec(broker.log)?.[1] ?? null;
      const m = /listening on (http:\/\/\S+)/.exec(broker.log);
      if (m && !broker.url) {
        broker.url = m[1];
        clearTimeout(timer);
        resolveStart(broker);
      }
    });
  });
}

export function launchBrowser() {
  return chromium.launch({
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
}

// Polls fn until it returns without throwing, or fails with its last error after the timeout.
export async function eventually(fn, timeout = TIMEOUT) {
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

// The chat is up: connected, in #general.
export async function waitConnected(page) {
  await page.locator('[data-testid="connection-state"].connected').waitFor();
  await page.getByTestId('room-name').filter({ hasText: '#general' }).waitFor();
}

// Opens a browser context of `width`×700, logs `username` in with the development login and
// waits until the chat is up. Page errors are printed with the user's name.
export async function devLogin(browser, baseUrl, username, width) {
  const context = await browser.newContext({ viewport: { width, height: 700 } });
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

// The clientIds in the room's online list, in the order shown.
export const onlineUsers = (page) =>
  page.locator('[data-testid="online-user"]').evaluateAll((els) =>
    els.map((e) => e.getAttribute('data-client-id')),
  );

// The names in the room's online list, in the order shown.
export const onlineNames = (page) =>
  page.locator('[data-testid="online-name"]').evaluateAll((els) => els.map((e) => e.textContent));

// [sender, text] of every message shown, in order.
export const messageTexts = (page) =>
  page.locator('[data-testid="message"]').evaluateAll((els) =>
    els.map((e) => [
      e.querySelector('[data-testid="sender"]').textContent,
      e.querySelector('[data-testid="text"]').textContent,
    ]),
  );

// Sends a message and waits until the composer has taken it.
export async function send(page, text) {
  const box = page.getByLabel('Message');
  await box.fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
  await eventually(async () => assert.equal(await box.inputValue(), ''));
}
