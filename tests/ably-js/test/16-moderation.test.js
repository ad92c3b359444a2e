// The before-publish moderation hook (issue 18; ably-chat.md §4 ErrorInfo `detail`, §5.4 R1,
// §5.11) against the real SDKs, once per wire format. The broker is started with a
// `[moderation]` section whose endpoint is a little HTTP server in this file: it sees each
// publish as the broker will store it, with the broker's secret, and rejects any whose text
// is "bad" with 42211 and a `detail`. @ably/chat's `room.messages.send()` then rejects with
// that code, status 422 and the detail (ably-js `errorDetail` of `request()`, which the Chat
// SDK passes on as the ErrorInfo's `detail`); an accepted message is sent and received; and
// ably-js `channel.publish()` of a rejected message rejects with the NACK's code and detail.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  makeKey,
  startBroker,
  startHttpServer,
  withCtx,
  withTimeout,
  uniqueChannel,
  rejectionOf,
  collector,
} from '../lib/helpers.js';
import { chatClient, attachedRoom } from '../lib/chat.js';

/** What the broker presents to the endpoint. */
const SECRET = 'moderation-test-secret';

describe('moderation hook', () => {
  const key = makeKey('conformance.root');
  let endpoint;
  let broker;
  /** Every review the endpoint got, for the tests to look at. */
  const reviews = [];

  before(async () => {
    endpoint = await startHttpServer((req, res, body) => {
      const review = JSON.parse(body.toString('utf8'));
      reviews.push({ authorization: req.headers.authorization, review });
      const message = review.messages[0];
      // A chat message's data is JSON text (`encoding: "json"`); a plain one here a string.
      const text = message.encoding === 'json' ? JSON.parse(message.data).text : message.data;
      const verdict =
        text === 'bad'
          ? { action: 'reject', code: 42211, message: 'not in this room', detail: { reason: 'profanity' } }
          : { action: 'accept' };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(verdict));
    });
    const config = [
      '[moderation]',
      `url = "http://127.0.0.1:${endpoint.port}/review"`,
      'channels = ["*::$chat", "mod:*"]',
      `secret = "${SECRET}"`,
    ].join('\n');
    broker = await startBroker({ keys: [key.full], config, label: 'moderation' });
  });
  after(async () => {
    await broker?.stop();
    await endpoint?.close();
  });

  for (const format of FORMATS) {
    test(`[${format.name}] a rejected chat send and publish reject with the endpoint's code and detail`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('mod-room');
      const alice = chatClient(ctx, format, { key, clientId: 'alice' });
      const bob = chatClient(ctx, format, { key, clientId: 'bob' });
      const [roomA, roomB] = await Promise.all([attachedRoom(alice, name), attachedRoom(bob, name)]);
      const received = collector('bob chat messages');
      roomB.messages.subscribe((event) => received.listener(event.message.text));

      const error = await rejectionOf(roomA.messages.send({ text: 'bad' }), 'alice messages.send(bad)');
      assert.equal(error.code, 42211, `code (${error.message})`);
      assert.equal(error.statusCode, 422, 'statusCode');
      assert.deepEqual(error.detail, { reason: 'profanity' }, 'the endpoint detail');
      const rejected = reviews.find((r) => r.review.channel === `${name}::$chat`);
      assert.ok(rejected, 'the endpoint saw the room');
      assert.equal(rejected.authorization, `Bearer ${SECRET}`, "the broker's secret");
      assert.equal(rejected.review.source, 'chat');
      assert.equal(rejected.review.messages[0].clientId, 'alice');

      const sent = await withTimeout(roomA.messages.send({ text: 'fine' }), T.event, 'alice messages.send(fine)');
      assert.equal(sent.text, 'fine');
      await received.waitFor(1, T.event);
      assert.deepEqual(received.messages, ['fine'], 'bob gets the accepted message only');

      const channel = alice.realtime.channels.get(uniqueChannel('mod:plain'));
      const nack = await rejectionOf(channel.publish('greeting', 'bad'), 'publish(bad)');
      assert.equal(nack.code, 42211, `NACK code (${nack.message})`);
      assert.equal(nack.detail?.reason, 'profanity', 'NACK detail');
      await withTimeout(channel.publish('greeting', 'good'), T.event, 'publish(good)');
      const page = await withTimeout(channel.history(), T.event, 'history()');
      assert.deepEqual(page.items.map((m) => m.data), ['good'], 'only the accepted message is stored');
    }));
  }
});
