// Annotations on a plain channel with ably-js 2.x (issue 18; ably-chat.md §4, §5.6; RTAN1–4,
// RSAN1, RSAN3): `channel.annotations.publish()` and `delete()` over realtime, raw annotations
// reaching `annotations.subscribe()` only on an attachment with the ANNOTATION_SUBSCRIBE mode,
// every subscriber's `message.summary` events with the aggregated summary, and REST
// `getMessage()`, history and `annotations.get()` reading back the same. Once per wire format.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  makeKey,
  startBroker,
  withCtx,
  withTimeout,
  uniqueChannel,
  collector,
  expectCode,
} from '../lib/helpers.js';

const DISTINCT = 'reaction:distinct.v1';
const MULTIPLE = 'reaction:multiple.v1';

describe('annotations (ably-js)', () => {
  const key = makeKey('conformance.root');
  let broker;
  before(async () => {
    broker = await startBroker({ keys: [key.full], label: 'annotations' });
  });
  after(async () => {
    await broker?.stop();
  });

  for (const format of FORMATS) {
    test(`[${format.name}] annotations.publish() and delete() add up in summaries that every subscriber gets; REST reads them back`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('annotated');
      const alice = ctx.realtime(format, { key: key.full, clientId: 'alice' });
      const bob = ctx.realtime(format, { key: key.full, clientId: 'bob' });
      const watcher = ctx.realtime(format, { key: key.full });
      const modes = ['PUBLISH', 'SUBSCRIBE', 'ANNOTATION_PUBLISH', 'ANNOTATION_SUBSCRIBE'];
      const watched = watcher.channels.get(name, { modes });
      const raw = collector('annotations');
      await withTimeout(watched.annotations.subscribe(raw.listener), T.event, 'annotations.subscribe()');
      const atWatcher = collector('watcher messages');
      await watched.subscribe(atWatcher.listener);
      const chA = alice.channels.get(name);
      const atAlice = collector('alice messages');
      await chA.subscribe(atAlice.listener);
      const chB = bob.channels.get(name);
      await withTimeout(chB.attach(), T.event, 'bob attach');

      await withTimeout(chA.publish('photo', 'a cat'), T.event, 'publish');
      const [photo] = await atAlice.waitFor(1, T.event);
      await withTimeout(chA.annotations.publish(photo, { type: DISTINCT, name: '👍' }), T.event, 'alice annotations.publish()');
      await withTimeout(chB.annotations.publish(photo.serial, { type: DISTINCT, name: '👍' }), T.event, 'bob annotations.publish()');
      await withTimeout(chB.annotations.publish(photo.serial, { type: MULTIPLE, name: '🎉', count: 2 }), T.event, 'bob multiple');

      const first = await raw.waitForMatch((a) => a.clientId === 'alice', 'alice\'s raw annotation');
      assert.equal(first.type, DISTINCT);
      assert.equal(first.name, '👍');
      assert.equal(first.action, 'annotation.create');
      assert.equal(first.messageSerial, photo.serial);
      assert.ok(first.serial > photo.serial, 'an annotation sorts after its message');
      const total = (m) => m.annotations?.summary?.[MULTIPLE]?.['🎉']?.total;
      // The annotator, without ANNOTATION_SUBSCRIBE, still gets the summaries.
      const summary = await atAlice.waitForMatch((m) => m.action === 'message.summary' && total(m) === 2, 'alice\'s summary with both');
      assert.equal(summary.serial, photo.serial, 'a summary names the message');
      assert.deepEqual(summary.annotations.summary[DISTINCT], { '👍': { total: 2, clientIds: ['alice', 'bob'], clipped: false } });
      assert.deepEqual(summary.annotations.summary[MULTIPLE]['🎉'].clientIds, { bob: 2 });
      await atWatcher.waitForMatch((m) => m.action === 'message.summary' && total(m) === 2, 'the watcher\'s summary');

      await withTimeout(chA.annotations.delete(photo, { type: DISTINCT, name: '👍' }), T.event, 'alice annotations.delete()');
      const after = await atAlice.waitForMatch(
        // The first summary had alice alone: this one has bob alone.
        (m) => m.action === 'message.summary' && m.annotations.summary[DISTINCT]?.['👍']?.clientIds?.[0] === 'bob'
          && m.annotations.summary[DISTINCT]['👍'].total === 1,
        'the summary after the delete',
      );
      assert.deepEqual(after.annotations.summary[DISTINCT]['👍'].clientIds, ['bob']);
      const deleted = await raw.waitForMatch((a) => a.action === 'annotation.delete', 'the raw delete');
      assert.equal(deleted.clientId, 'alice');

      const rest = ctx.rest(format, { key: key.full });
      const rch = rest.channels.get(name);
      const got = await withTimeout(rch.getMessage(photo.serial), T.event, 'REST getMessage()');
      assert.deepEqual(got.annotations.summary[DISTINCT]['👍'].clientIds, ['bob'], 'getMessage() has the summary');
      const page = await withTimeout(rch.history(), T.event, 'REST history()');
      assert.equal(page.items.length, 1, 'history: the message once, no summaries or annotations');
      assert.equal(page.items[0].annotations.summary[MULTIPLE]['🎉'].total, 2, 'history has the summary');
      const listed = await withTimeout(rch.annotations.get(photo.serial, { limit: 2 }), T.event, 'REST annotations.get()');
      assert.deepEqual(listed.items.map((a) => `${a.clientId}:${a.type}`), [`alice:${DISTINCT}`, `bob:${DISTINCT}`], 'oldest first');
      const next = await withTimeout(listed.next(), T.event, 'annotations.get() next page');
      assert.deepEqual(next.items.map((a) => a.action), ['annotation.create', 'annotation.delete']);

      // REST annotations.publish() (RSAN1) reaches the realtime subscribers too.
      await withTimeout(rch.annotations.publish(photo.serial, { type: MULTIPLE, name: '🎉' }), T.event, 'REST annotations.publish()');
      await atAlice.waitForMatch((m) => m.action === 'message.summary' && total(m) === 3, 'the summary after the REST annotation');
    }));

    test(`[${format.name}] an annotation of an unknown message or of an unknown type is refused`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('annotated-bad');
      const alice = ctx.realtime(format, { key: key.full, clientId: 'alice' });
      const ch = alice.channels.get(name);
      await withTimeout(ch.attach(), T.event, 'attach');
      await withTimeout(ch.publish('m', 'x'), T.event, 'publish');
      const rest = ctx.rest(format, { key: key.full });
      const [message] = (await rest.channels.get(name).history()).items;
      await expectCode(ch.annotations.publish(`${message.serial}9`, { type: DISTINCT, name: 'x' }), 40400, 'unknown message');
      await expectCode(ch.annotations.publish(message.serial, { type: 'reaction:sum.v1', name: 'x' }), 40003, 'unknown aggregation');
      assert.equal(ch.state, 'attached', 'the channel stays attached');
    }));
  }
});
