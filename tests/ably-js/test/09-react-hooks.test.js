// React hooks from `ably/react` against the broker (ably-protocol.md §10, §6).
//
// Rendered in Node with react-test-renderer (no DOM). Two clients, each with its own
// React tree: one component enters with usePresence, the other's usePresenceListener
// renders the member list. The hooks add nothing to the protocol except
// `params.agent` on ATTACH (§10), so this checks that an app built on them works.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import React from 'react';
import TestRenderer from 'react-test-renderer';
import { AblyProvider, ChannelProvider, usePresence, usePresenceListener } from 'ably/react';
import {
  FORMATS,
  T,
  makeKey,
  mintJwt,
  startBroker,
  withCtx,
  uniqueChannel,
  deferred,
  withTimeout,
  collector,
} from '../lib/helpers.js';

const h = React.createElement;

/**
 * Records every value a component renders and lets the test await one that satisfies
 * a predicate (renders are the observable output of the hooks).
 */
function renderLog(label) {
  const values = [];
  const waiters = [];
  const push = (v) => {
    values.push(v);
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i].pred(v)) {
        waiters[i].resolve(v);
        waiters.splice(i, 1);
      }
    }
  };
  const waitFor = (pred, what) => {
    const last = values.at(-1);
    if (values.length && pred(last)) return Promise.resolve(last);
    const d = deferred();
    waiters.push({ pred, resolve: d.resolve });
    return withTimeout(d.promise, T.event, `${label}: ${what}`).catch((e) => {
      e.message += `; last rendered: ${JSON.stringify(values.at(-1))}`;
      throw e;
    });
  };
  return { values, push, waitFor };
}

/** usePresenceListener → rendered list `clientId=json(data)`. */
function Roster({ channelName, log, onEvent }) {
  const { presenceData } = usePresenceListener(channelName, onEvent);
  const members = presenceData
    .map((m) => `${m.clientId}=${JSON.stringify(m.data)}`)
    .sort();
  log.push(members);
  return h('ul', null, members.map((m) => h('li', { key: m }, m)));
}

/** usePresence: enters with `data` on mount, leaves on unmount; exposes updateStatus. */
function Member({ channelName, data, api }) {
  const { updateStatus } = usePresence(channelName, data);
  api.updateStatus = updateStatus;
  return h('span', null, 'member');
}

const tree = (client, channelName, child) =>
  h(AblyProvider, { client }, h(ChannelProvider, { channelName }, child));

describe('react hooks (ably/react)', () => {
  const key = makeKey('conformance.root');
  let broker;
  before(async () => {
    broker = await startBroker({ keys: [key.full], label: 'react-hooks' });
  });
  after(async () => {
    await broker?.stop();
  });

  for (const format of FORMATS) {
    test(`[${format.name}] usePresence enters, updates and leaves on unmount; usePresenceListener renders it`, withCtx(() => broker, async (ctx) => {
      const name = uniqueChannel('react-presence');
      const memberClient = ctx.realtime(format, { token: mintJwt({ key, clientId: 'react-user' }) }, { label: `member-${format.name}` });
      // The listener is anonymous; usePresenceListener needs no clientId.
      const listenerClient = ctx.realtime(format, { key: key.full }, { label: `listener-${format.name}` });
      const log = renderLog('roster');
      const events = collector('listener callbacks');
      const api = {};
      let roster;
      let member;
      try {
        roster = TestRenderer.create(tree(listenerClient, name, h(Roster, { channelName: name, log, onEvent: events.listener })));
        const listenerChannel = listenerClient.channels.get(name);
        if (listenerChannel.state !== 'attached') {
          await withTimeout(new Promise((r) => listenerChannel.once('attached', r)), T.event, 'listener channel attached');
        }

        member = TestRenderer.create(tree(memberClient, name, h(Member, { channelName: name, data: { status: 'online' }, api })));
        await log.waitFor((m) => m.includes('react-user={"status":"online"}'), 'member entered');
        const entered = await events.waitForMatch((m) => m.action === 'enter' && m.clientId === 'react-user', 'enter callback');
        assert.equal(entered.connectionId, memberClient.connection.id);

        await withTimeout(api.updateStatus({ status: 'away' }), T.event, 'updateStatus() ACK');
        await log.waitFor((m) => m.length === 1 && m[0] === 'react-user={"status":"away"}', 'member updated');
        await events.waitForMatch((m) => m.action === 'update' && m.clientId === 'react-user', 'update callback');

        // The rendered output of the listener tree.
        const li = roster.root.findAllByType('li').map((n) => n.children.join(''));
        assert.deepEqual(li, ['react-user={"status":"away"}']);

        // Every ATTACH from the hooks carried params.agent; the broker accepted it.
        const memberChannel = memberClient.channels.get(name);
        assert.equal(memberChannel.state, 'attached');
        assert.match(String(memberChannel.channelOptions?.params?.agent), /^react-hooks\//);

        member.unmount();
        member = undefined;
        await log.waitFor((m) => m.length === 0, 'member left after unmount');
        const left = await events.waitForMatch((m) => m.action === 'leave' && m.clientId === 'react-user', 'leave callback');
        assert.equal(left.connectionId, memberClient.connection.id);
        assert.deepEqual(
          events.messages.map((m) => `${m.action}:${m.clientId}`),
          ['enter:react-user', 'update:react-user', 'leave:react-user'],
        );
        assert.equal(memberClient.connection.state, 'connected', 'unmounting leaves presence, not the connection');
        // usePresence does not await (or catch) the leave() it sends on unmount, and
        // the listener can see the leave before the member's ACK arrives. ACKs come in
        // msgSerial order, so once this publish is ACKed the leave has been too, and
        // closing the client cannot fail it (an unhandled rejection in the hook).
        await withTimeout(memberChannel.publish('after-unmount', 'x'), T.event, 'ACK of a publish after the leave');
      } finally {
        member?.unmount();
        roster?.unmount();
      }
    }));
  }
});
