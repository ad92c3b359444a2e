// Browser end-to-end test of the app's chat room (💬 lobby), built on @ably/chat, on a real
// broker in real Chromium, with the development login (whose tokens carry every chat
// capability: edit and delete of one's own messages, reactions, occupancy).
//
//   npm run build --prefix examples/react-chat
//   BROKER_BIN=target/release/broker node --test examples/react-chat/e2e/room.test.mjs
//
// alice and bob, each in a browser context of their own, open the room: each sees the other
// online and two connections in the room; alice types and bob sees "alice is typing…"; alice
// sends, edits her message, and bob sees both; only alice has the edit and delete controls on
// it; bob reacts 👍 and alice sees the count; alice deletes a message and bob sees it deleted;
// bob reloads and finds the room's history in its latest versions. Every step waits for the
// page to show it (no fixed sleeps).
//
// Screenshots (typing, editing, reactions, after the reload; 1000×700) go to e2e/artifacts/,
// and with UPDATE_SCREENSHOTS=1 (`npm run screenshots`) also to screenshots/, where they are
// committed: a plain test run leaves the checkout as it found it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  artifacts,
  checkPrerequisites,
  devLogin,
  eventually,
  launchBrowser,
  startBroker,
} from './support.mjs';

const committed = join(resolve(dirname(fileURLToPath(import.meta.url)), '..'), 'screenshots');
const update = process.env.UPDATE_SCREENSHOTS === '1';

// Saves a screenshot of `page` as `name`.png in the artifacts, and in screenshots/ on request.
async function screenshot(page, name) {
  const png = await page.screenshot({ path: join(artifacts, name + '.png') });
  if (update) writeFileSync(join(committed, name + '.png'), png);
}

let broker;
let baseUrl;
let browser;

before(async () => {
  checkPrerequisites();
  if (update) mkdirSync(committed, { recursive: true });
  broker = await startBroker();
  baseUrl = broker.url;
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await broker?.stop();
});

// Logs `username` in with the development login and opens the chat room.
async function openUser(username) {
  const { context, page } = await devLogin(browser, baseUrl, username, 1000);
  await page.getByTestId('chat-room-link').filter({ hasText: 'lobby' }).click();
  await waitInRoom(page);
  return { context, page };
}

async function waitInRoom(page) {
  await page.locator('[data-testid="connection-state"].connected').waitFor();
  await page.getByTestId('chat-room-name').filter({ hasText: 'lobby' }).waitFor();
}

const onlineUsers = (page) =>
  page.locator('[data-testid="chat-online-user"]').evaluateAll((els) =>
    els.map((e) => e.getAttribute('data-client-id')),
  );

// [sender clientId, action, text] of every message shown, in order.
const chatMessages = (page) =>
  page.locator('[data-testid="chat-message"]').evaluateAll((els) =>
    els.map((e) => [
      e.getAttribute('data-client-id'),
      e.getAttribute('data-action'),
      e.querySelector('[data-testid="chat-text"]').textContent,
    ]),
  );

const messageBy = (page, serial) => page.locator(`[data-testid="chat-message"][data-serial="${serial}"]`);
const reaction = (message, name) => message.locator(`[data-testid="reaction"][data-name="${name}"]`);
const composer = (page) => page.getByLabel('Message', { exact: true });

// Sends `text` and returns the serial of the message once it is shown.
async function send(page, text) {
  await composer(page).fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
  await eventually(async () => assert.equal(await composer(page).inputValue(), ''));
  const mine = page
    .locator('[data-testid="chat-message"]')
    .filter({ has: page.getByTestId('chat-text').getByText(text, { exact: true }) })
    .last();
  await mine.waitFor();
  return mine.getAttribute('data-serial');
}

test('two users in a chat room: presence, occupancy, typing, edit, delete, reactions, history', async () => {
  const alice = await openUser('alice');
  const bob = await openUser('bob');
  assert.match(new URL(alice.page.url()).hash, /^#room=lobby$/, 'the room is in the address');

  // Both see both online, and two connections in the room.
  for (const { page } of [alice, bob]) {
    await eventually(async () => assert.deepEqual(await onlineUsers(page), ['alice', 'bob']));
    await page.locator('[data-testid="occupancy"][data-connections="2"]').waitFor();
  }
  assert.equal(await bob.page.getByTestId('occupancy').textContent(), '2 in the room');

  // alice types: bob sees it; sending stops it.
  await composer(alice.page).fill('hello b');
  await bob.page.getByTestId('typing').filter({ hasText: 'alice is typing…' }).waitFor();
  await screenshot(bob.page, 'chat-room-typing');
  assert.equal(await alice.page.getByTestId('typing').textContent(), '', 'nobody else is typing');
  const hello = await send(alice.page, 'hello bob');
  await messageBy(bob.page, hello).getByText('hello bob', { exact: true }).waitFor();
  await eventually(async () => assert.equal(await bob.page.getByTestId('typing').textContent(), ''));

  // Only the author has edit and delete controls.
  await messageBy(alice.page, hello).getByTestId('edit').waitFor();
  assert.equal(await messageBy(alice.page, hello).getByTestId('delete').count(), 1);
  assert.equal(await messageBy(bob.page, hello).getByTestId('edit').count(), 0, 'bob: no edit');
  assert.equal(await messageBy(bob.page, hello).getByTestId('delete').count(), 0, 'bob: no delete');

  // alice edits inline: bob sees the new text, marked as edited.
  await messageBy(alice.page, hello).getByTestId('edit').click();
  await alice.page.getByTestId('edit-input').fill('hello bob, welcome to the lobby');
  await screenshot(alice.page, 'chat-room-editing');
  await alice.page.getByTestId('edit-save').click();
  for (const { page } of [alice, bob]) {
    const m = messageBy(page, hello);
    await m.getByTestId('chat-text').filter({ hasText: 'hello bob, welcome to the lobby' }).waitFor();
    await m.getByTestId('edited').waitFor();
    assert.equal(await m.getAttribute('data-action'), 'message.update');
  }

  // bob reacts 👍: alice sees the count, bob sees his own reaction pressed.
  await reaction(messageBy(bob.page, hello), '👍').click();
  const aliceThumb = reaction(messageBy(alice.page, hello), '👍');
  await aliceThumb.getByTestId('reaction-count').filter({ hasText: /^1$/ }).waitFor();
  assert.equal(await aliceThumb.getAttribute('aria-pressed'), 'false', 'not alice’s own');
  await reaction(messageBy(bob.page, hello), '👍').and(bob.page.locator('[aria-pressed="true"]')).waitFor();
  // alice adds ❤️, then 👍, and takes the ❤️ back: counts follow on both sides.
  await reaction(messageBy(alice.page, hello), '❤️').click();
  await reaction(messageBy(bob.page, hello), '❤️').getByTestId('reaction-count').filter({ hasText: /^1$/ }).waitFor();
  await aliceThumb.click();
  await reaction(messageBy(bob.page, hello), '👍').getByTestId('reaction-count').filter({ hasText: /^2$/ }).waitFor();
  await reaction(messageBy(alice.page, hello), '❤️').and(alice.page.locator('[aria-pressed="true"]')).click();
  const bobHeart = reaction(messageBy(bob.page, hello), '❤️').getByTestId('reaction-count');
  await eventually(async () => assert.equal(await bobHeart.textContent(), ''));

  // bob answers; alice sends one more and deletes it: bob sees it deleted.
  const reply = await send(bob.page, 'hi alice 👋');
  await messageBy(alice.page, reply).waitFor();
  assert.equal(await messageBy(alice.page, reply).getByTestId('edit').count(), 0, 'alice: no edit on bob’s');
  const oops = await send(alice.page, 'oops, wrong room');
  await messageBy(bob.page, oops).waitFor();
  await screenshot(alice.page, 'chat-room-reactions');
  await messageBy(alice.page, oops).getByTestId('delete').click();
  for (const { page } of [alice, bob]) {
    await messageBy(page, oops).getByTestId('deleted').waitFor();
    assert.equal(await messageBy(page, oops).getAttribute('data-action'), 'message.delete');
    assert.equal(await messageBy(page, oops).getByTestId('reaction').count(), 0, 'no reactions on a deleted message');
  }
  assert.equal(await messageBy(alice.page, oops).getByTestId('edit').count(), 0, 'a deleted message cannot be edited');
  const expected = [
    ['alice', 'message.update', 'hello bob, welcome to the lobby'],
    ['bob', 'message.create', 'hi alice 👋'],
    ['alice', 'message.delete', 'This message was deleted'],
  ];
  for (const { page } of [alice, bob]) {
    await eventually(async () => assert.deepEqual(await chatMessages(page), expected));
  }

  // bob reloads: back in the room (from the address), the history in its latest versions,
  // with the reactions.
  await bob.page.reload();
  await waitInRoom(bob.page);
  await eventually(async () => assert.deepEqual(await chatMessages(bob.page), expected));
  const thumb = reaction(messageBy(bob.page, hello), '👍');
  await thumb.getByTestId('reaction-count').filter({ hasText: /^2$/ }).waitFor();
  assert.equal(await thumb.getAttribute('aria-pressed'), 'true', 'bob’s own 👍 after the reload');
  await messageBy(bob.page, hello).getByTestId('edited').waitFor();
  await eventually(async () => assert.deepEqual(await onlineUsers(bob.page), ['alice', 'bob']));
  await bob.page.locator('[data-testid="occupancy"][data-connections="2"]').waitFor();
  await screenshot(bob.page, 'chat-room-after-reload');

  // The plain channels are still there, and the room comes back after a visit to one.
  await bob.page.getByRole('button', { name: '# general' }).click();
  await bob.page.getByTestId('room-name').filter({ hasText: '#general' }).waitFor();
  assert.equal(new URL(bob.page.url()).hash, '');
  await bob.page.getByTestId('chat-room-link').filter({ hasText: 'lobby' }).click();
  await eventually(async () => assert.deepEqual(await chatMessages(bob.page), expected));

  // bob leaves: alice sees him go.
  await bob.page.close({ runBeforeUnload: true });
  await bob.context.close();
  await eventually(async () => assert.deepEqual(await onlineUsers(alice.page), ['alice']), 60_000);
  await alice.context.close();
});
