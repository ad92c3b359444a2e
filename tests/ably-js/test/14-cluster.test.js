// Cluster mode under failures (issue 17, `../shared/cluster.md` §3.7, §3.9): three real
// nats-servers as one JetStream cluster, two or three broker nodes, real ably-js clients, all on
// loopback. Each scenario starts its own NATS cluster and nodes and kills them at the end.
//
// After each scenario the channel's history is read over REST from every node and checked
// (lib/cluster.js `checkInvariants`): every node holds the same history, in the same order with
// the same serials; every ACKed publish is in it exactly once; each publisher's ACKed messages
// are in its order; every subscriber, on every node, received exactly that history in order.
//
// A client is moved to another node by a TCP front (the suite's proxy) that forwards to one
// node and is retargeted to another before the first is killed: ably-js then resumes through
// the same host and port. Only the msgpack format is run: the wire format plays no part in
// what these scenarios break.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS,
  T,
  makeKey,
  connectionState,
  nextEvent,
  uniqueChannel,
  collector,
  withTimeout,
} from '../lib/helpers.js';
import {
  withCluster,
  nodeConfig,
  streamOf,
  publisher,
  convergedHistories,
  settledHistories,
  checkInvariants,
} from '../lib/cluster.js';

const format = FORMATS.find((f) => f.name === 'msgpack');
const key = makeKey('cluster.root');
/** Few streams, so the channel's stream is busy and the servers have less to elect. */
const SHARDS = 2;
/** How long every publisher of a scenario may take to settle, elections included. */
const SETTLE_MS = 90000 * Number(process.env.TIMEOUT_SCALE || 1);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Start nodes one after another (the first creates the streams), each given every server. */
async function startNodes(ctx, names, configFor) {
  for (const name of names) await ctx.startNode(name, { keys: [key.full], config: configFor(name) });
}

/**
 * Counts, from an ably-js client's frame log, the MESSAGE frames it sent per msgSerial:
 * `resent()` is how many msgSerials it sent more than once (re-sent after a resume).
 */
function sendTap() {
  const sends = new Map();
  return {
    onLog(line) {
      const m = /sending msg; \[ProtocolMessage; action=MESSAGE;.*msgSerial=(\d+)/.exec(line);
      if (m) sends.set(m[1], (sends.get(m[1]) ?? 0) + 1);
    },
    sent: () => sends.size,
    resent: () => [...sends.values()].filter((n) => n > 1).length,
  };
}

/** An ably-js client on node `port`, connected. */
async function client(ctx, label, port, { onLog } = {}) {
  const c = ctx.realtime(format, { key: key.full }, { label, port, onLog });
  await connectionState(c, 'connected');
  return c;
}

/** A subscriber on `channel`, attached: its collector. */
async function subscriber(ctx, label, port, channel) {
  const c = await client(ctx, label, port);
  const col = collector(`messages of ${label}`);
  await c.channels.get(channel).subscribe(col.listener);
  return { client: c, col, channel: c.channels.get(channel) };
}

/** Ably.Rest clients for the given nodes (name → Rest), for the final reads. */
function rests(ctx, names) {
  return Object.fromEntries(
    names.map((n) => [n, ctx.rest(format, { key: key.full }, { label: `rest-${n}`, port: ctx.node(n).port })]),
  );
}

/** Await every publisher, bounded; note what each got. */
async function settle(ctx, t, publishers) {
  await withTimeout(Promise.all(publishers.map((p) => p.done)), SETTLE_MS, 'every publish settled');
  for (const p of publishers) {
    const line = `${p.label}: ${p.names.length} issued, ${p.acked().length} ACKed, ${p.nacked().length} NACKed ` +
      `${JSON.stringify(p.nackCodes())}`;
    ctx.note(line);
    t.diagnostic(line);
  }
}

/**
 * Every node's history of `channel` once the nodes agree and hold every ACKed message
 * (bounded); notes how long that took and what JetStream holds.
 */
async function finalHistories(ctx, t, nodes, channel, publishers) {
  const { histories, waitedMs } = await settledHistories(rests(ctx, nodes), channel, publishers);
  const stream = streamOf(channel, { shards: SHARDS });
  const line = `final read: the views agreed and held every ACKed message after ${waitedMs} ms; ` +
    `${stream}: ${JSON.stringify(await ctx.nats.streamStates(stream))}`;
  ctx.note(line);
  t.diagnostic(line);
  return histories;
}

/**
 * The events of a client moved to another node: resolves with { change, attached, updates }
 * once it is connected again and, when it has an attached channel, that channel re-attached.
 */
function moveWatch(c, channel) {
  const connected = nextEvent(c.connection, 'disconnected', T.event, 'disconnect from the killed node').then(() =>
    nextEvent(c.connection, 'connected', 2 * T.event, 'reconnect on another node'),
  );
  const updates = [];
  let attached = Promise.resolve(null);
  if (channel) {
    channel.on('update', (change) => updates.push(change));
    attached = new Promise((resolve) => channel.on('attaching', () => channel.once('attached', resolve)));
  }
  return { connected, attached, updates };
}

describe('cluster failures (3 nats-servers, real ably-js)', () => {
  // 1. kill -9 a broker node while its clients publish and others subscribe elsewhere.
  test('kill -9 a broker node: its clients resume on another node, nothing lost or doubled', withCluster(async (ctx, t) => {
    const nats = await ctx.startNats(3, 'kill-node');
    await startNodes(ctx, ['a', 'b', 'c'], (n) => nodeConfig({ nats: nats.urls(), nodeId: n, shards: SHARDS }));
    const channel = uniqueChannel('kill-node');
    const front = await ctx.proxy(ctx.node('a').port);

    // On a, through the front: two publishers and a subscriber. Elsewhere: subscribers on b
    // and c, and a publisher on c that goes on throughout.
    const subA = await subscriber(ctx, 'sub-a', front.port, channel);
    const subB = await subscriber(ctx, 'sub-b', ctx.node('b').port, channel);
    const subC = await subscriber(ctx, 'sub-c', ctx.node('c').port, channel);
    const taps = [sendTap(), sendTap()];
    const pubA1 = await client(ctx, 'pub-a1', front.port, taps[0]);
    const pubA2 = await client(ctx, 'pub-a2', front.port, taps[1]);
    const pubC = await client(ctx, 'pub-c', ctx.node('c').port);
    const moved = [subA.client, pubA1, pubA2];
    const idsBefore = moved.map((c) => c.connection.id);
    const watches = [moveWatch(subA.client, subA.channel), moveWatch(pubA1), moveWatch(pubA2)];

    const publishers = [
      publisher(pubA1.channels.get(channel), 'a1', { count: 300, window: 10, paceMs: 2 }),
      publisher(pubA2.channels.get(channel), 'a2', { count: 300, window: 10, paceMs: 2 }),
      publisher(pubC.channels.get(channel), 'c', { count: 300, window: 5, paceMs: 5 }),
    ];
    // Once a's publishers are well under way, the front turns to b, and a dies.
    const killAt = new Promise((resolve) => publishers[0].onAcked(60, resolve));
    await withTimeout(killAt, T.bulk, '60 ACKs on node a');
    front.retarget(ctx.node('b').port);
    const killed = ctx.killNode('a');
    const acksAtKill = publishers.map((p) => p.ackedCount());
    await killed;
    ctx.note(`node a killed after ACKs ${JSON.stringify(acksAtKill)}`);
    t.diagnostic(`node a killed after ACKs ${JSON.stringify(acksAtKill)} (a1, a2, c)`);

    for (const [i, w] of watches.entries()) {
      const change = await w.connected;
      assert.equal(moved[i].connection.id, idsBefore[i], `${['sub-a', 'pub-a1', 'pub-a2'][i]} resumed its connection on b`);
      assert.equal(change.reason, undefined, `a successful resume carries no error; got ${change.reason?.code} ${change.reason?.message}`);
    }
    const reattached = await withTimeout(watches[0].attached, T.event, "sub-a's channel re-attached on b");
    assert.equal(reattached.resumed, true, "sub-a's channel re-attached with RESUMED on b");
    assert.equal(watches[0].updates.length, 0, 'no continuity loss on the moved subscriber');

    await settle(ctx, t, publishers);
    t.diagnostic(`MESSAGE frames re-sent after the resume: a1 ${taps[0].resent()} of ${taps[0].sent()}, a2 ${taps[1].resent()} of ${taps[1].sent()}`);
    for (const p of publishers) {
      assert.deepEqual(p.nacked().slice(0, 5), [], `${p.label}: no NACK (ably-js re-sends what was not ACKed)`);
      assert.equal(p.acked().length, 300, `${p.label}: all ACKed`);
    }

    // a comes back (its view rebuilt after the kill) and must agree too.
    await ctx.startNode('a');
    const histories = await finalHistories(ctx, t, ['a', 'b', 'c'], channel, publishers);
    const history = await checkInvariants({
      histories,
      publishers,
      subscribers: { 'sub-a (moved to b)': subA.col, 'sub-b': subB.col, 'sub-c': subC.col },
    });
    assert.equal(history.length, 900, 'every message once');
    t.diagnostic(`history ${history.length} messages on a, b and c`);
  }));

  // 2. kill -9 the JetStream leader of the channel's stream while it is busy. Writes stall for
  // the election (4–7 s here). A node whose applier's consumer (an R1 ordered consumer, placed
  // on one of the stream's servers) died with the server, while the node's own NATS connection
  // stayed up, gets nothing from that consumer; the applier notices within 2 s of silence that
  // the stream went on without it and opens a new one (async-nats alone would take about 30 s,
  // its idle heartbeats). The final read waits for the views (bounded) and notes how long.
  test('kill -9 the stream leader: writes stall for the election, nothing ACKed lost, nothing twice', withCluster(async (ctx, t) => {
    const nats = await ctx.startNats(3, 'kill-leader');
    await startNodes(ctx, ['a', 'b'], (n) => nodeConfig({ nats: nats.urls(), nodeId: n, shards: SHARDS }));
    const channel = uniqueChannel('kill-leader');
    const stream = streamOf(channel, { shards: SHARDS });
    await nats.waitReady();
    const leader = await nats.waitStreamLeader(stream);

    const subA = await subscriber(ctx, 'sub-a', ctx.node('a').port, channel);
    const subB = await subscriber(ctx, 'sub-b', ctx.node('b').port, channel);
    const pubA = await client(ctx, 'pub-a', ctx.node('a').port);
    const pubB = await client(ctx, 'pub-b', ctx.node('b').port);
    const publishers = [
      publisher(pubA.channels.get(channel), 'a', { count: 400, window: 10, paceMs: 5 }),
      publisher(pubB.channels.get(channel), 'b', { count: 400, window: 10, paceMs: 5 }),
    ];
    await withTimeout(new Promise((resolve) => publishers[0].onAcked(50, resolve)), T.bulk, '50 ACKs');
    const consumers = await nats.consumerHosts(stream);
    await nats.kill(leader);
    const killedAt = Date.now();
    t.diagnostic(`consumers on ${stream} (the nodes' appliers) led by: ${JSON.stringify(consumers)}`);
    const acksAtKill = publishers.map((p) => p.ackedCount());
    ctx.note(`killed ${nats.servers[leader].name}, leader of ${stream}, after ACKs ${JSON.stringify(acksAtKill)}`);
    const successor = await nats.waitStreamLeader(stream);
    t.diagnostic(`${stream}: ${nats.servers[leader].name} killed, ${nats.servers[successor].name} elected after ${Date.now() - killedAt} ms`);
    assert.notEqual(successor, leader);

    await settle(ctx, t, publishers);
    assert.ok(
      publishers.every((p) => p.ackedCount() > acksAtKill[publishers.indexOf(p)]),
      'writes went on after the election',
    );
    nats.restart(leader);
    await nats.waitReady();

    const histories = await finalHistories(ctx, t, ['a', 'b'], channel, publishers);
    const history = await checkInvariants({ histories, publishers, subscribers: { 'sub-a': subA.col, 'sub-b': subB.col } });
    t.diagnostic(`history ${history.length} messages on a and b`);
  }));

  // 3. SIGSTOP, for 15 s, the NATS server a node is connected to. The node, x, is given only
  // that server's URL (async-nats picks among the listed servers at random). (a) The servers
  // do not advertise the others to clients: x knows only the frozen server and is cut off for
  // the whole pause. (b) They do (the default): x learnt the others' URLs when it connected,
  // notices the frozen server by its pings and moves to another server.
  for (const advertise of [false, true]) {
    const variant = advertise ? '(b) other servers advertised: x moves to one' : '(a) no other server known: x is cut off';
    test(`SIGSTOP the NATS server a node uses for 15 s, ${variant}; its publishes stall or NACK, then all is consistent`, withCluster(async (ctx, t) => {
      const nats = await ctx.startNats(3, advertise ? 'pause-adv' : 'pause', { advertise });
      const paused = 0;
      await startNodes(ctx, ['a', 'x'], (n) =>
        nodeConfig({
          nats: n === 'x' ? [nats.url(paused)] : nats.urls(),
          nodeId: n,
          shards: SHARDS,
          publishDeadlineMs: n === 'x' ? 4000 : undefined,
        }),
      );
      const channel = uniqueChannel('pause');
      const stream = streamOf(channel, { shards: SHARDS });
      await nats.waitReady();
      const leader = await nats.waitStreamLeader(stream);

      const subA = await subscriber(ctx, 'sub-a', ctx.node('a').port, channel);
      const subX = await subscriber(ctx, 'sub-x', ctx.node('x').port, channel);
      const pubA = await client(ctx, 'pub-a', ctx.node('a').port);
      const pubX = await client(ctx, 'pub-x', ctx.node('x').port);
      const publishers = [
        publisher(pubA.channels.get(channel), 'a', { count: 2000, window: 2, paceMs: 40 }),
        publisher(pubX.channels.get(channel), 'x', { count: 2000, window: 2, paceMs: 40 }),
      ];
      await withTimeout(new Promise((resolve) => publishers[1].onAcked(20, resolve)), T.bulk, '20 ACKs on x');
      nats.pause(paused);
      const acksAtPause = publishers.map((p) => p.ackedCount());
      // The scenario is a 15 s freeze: this wait is its length, not a wait for an event.
      await sleep(15000);
      nats.resume(paused);
      const acksAtResume = publishers.map((p) => p.ackedCount());
      const nacksAtResume = publishers.map((p) => p.nacked().length);
      const line = `paused ${nats.servers[paused].name} (${paused === leader ? 'the stream leader' : 'a follower'}) 15 s: ` +
        `ACKs a ${acksAtPause[0]}→${acksAtResume[0]}, x ${acksAtPause[1]}→${acksAtResume[1]}; ` +
        `NACKs during the pause a ${nacksAtResume[0]}, x ${nacksAtResume[1]}`;
      ctx.note(line);
      t.diagnostic(line);
      await nats.waitReady();
      // x publishes again once it is back on NATS.
      await withTimeout(
        new Promise((resolve) => publishers[1].onAcked(acksAtResume[1] + 20, resolve)),
        SETTLE_MS,
        '20 more ACKs on x after SIGCONT',
      );
      for (const p of publishers) p.stop();
      await settle(ctx, t, publishers);
      for (const p of publishers) {
        for (const n of p.nacked()) assert.ok(p.outcome.get(n).nacked.code, `${n}: NACK with an error code`);
      }
      if (!advertise) {
        // Cut off from NATS for 15 s, past its 4 s publish deadline: x NACKed, never ACKed.
        assert.ok(nacksAtResume[1] > 0, 'x NACKed publishes while its only NATS server was frozen');
      }

      const histories = await finalHistories(ctx, t, ['a', 'x'], channel, publishers);
      const history = await checkInvariants({ histories, publishers, subscribers: { 'sub-a': subA.col, 'sub-x': subX.col } });
      t.diagnostic(`history ${history.length} messages on a and x`);
    }));
  }

  // 4. kill -9 every NATS server, then restart them all.
  test('kill -9 every NATS server and restart them: every ACKed message is there', withCluster(async (ctx, t) => {
    const nats = await ctx.startNats(3, 'kill-all');
    const configFor = (n) => nodeConfig({ nats: nats.urls(), nodeId: n, shards: SHARDS });
    await startNodes(ctx, ['a', 'b'], configFor);
    const channel = uniqueChannel('kill-all');

    const subA = await subscriber(ctx, 'sub-a', ctx.node('a').port, channel);
    const subB = await subscriber(ctx, 'sub-b', ctx.node('b').port, channel);
    const pubA = await client(ctx, 'pub-a', ctx.node('a').port);
    const pubB = await client(ctx, 'pub-b', ctx.node('b').port);
    const publishers = [
      publisher(pubA.channels.get(channel), 'a', { count: 300, window: 10, paceMs: 5 }),
      publisher(pubB.channels.get(channel), 'b', { count: 300, window: 10, paceMs: 5 }),
    ];
    await withTimeout(new Promise((resolve) => publishers[0].onAcked(50, resolve)), T.bulk, '50 ACKs');
    await Promise.all(nats.servers.map((_, i) => nats.kill(i)));
    const acksAtKill = publishers.map((p) => p.ackedCount());
    ctx.note(`every nats-server killed after ACKs ${JSON.stringify(acksAtKill)}`);
    nats.servers.forEach((_, i) => nats.restart(i));
    const killedAt = Date.now();
    await nats.waitReady();
    t.diagnostic(`every nats-server killed after ACKs ${JSON.stringify(acksAtKill)} (a, b); restarted and ready in ${Date.now() - killedAt} ms`);
    await settle(ctx, t, publishers);

    // Both nodes work again, and a new node builds its view from JetStream alone.
    const after = [
      publisher(pubA.channels.get(channel), 'a-after', { count: 20, window: 5 }),
      publisher(pubB.channels.get(channel), 'b-after', { count: 20, window: 5 }),
    ];
    await settle(ctx, t, after);
    for (const p of after) assert.equal(p.acked().length, 20, `${p.label}: publishing works after the restart`);
    await ctx.startNode('fresh', { keys: [key.full], config: configFor('fresh') });

    const histories = await finalHistories(ctx, t, ['a', 'b', 'fresh'], channel, [...publishers, ...after]);
    const history = await checkInvariants({
      histories,
      publishers: [...publishers, ...after],
      subscribers: { 'sub-a': subA.col, 'sub-b': subB.col },
    });
    t.diagnostic(`history ${history.length} messages on a, b and a fresh node`);
  }));

  // 5. A node down for longer than retention rebuilds its view when it comes back.
  test('a node down for longer than retention rebuilds its view: history equals the others', withCluster(async (ctx, t) => {
    const RETENTION_S = 8;
    const nats = await ctx.startNats(3, 'retention');
    // JetStream wants the duplicate window within max_age, the broker wants it to cover the
    // resume window, and the resume window to cover the presence grace period.
    const extra = [
      '[retention]',
      `max_age_secs = ${RETENTION_S}`,
      'sweep_interval_secs = 1',
      '[connection]',
      `connection_state_ttl_ms = ${RETENTION_S * 1000}`,
      '[presence]',
      'leave_grace_ms = 1000',
    ].join('\n');
    const configFor = (n) =>
      nodeConfig({ nats: nats.urls(), nodeId: n, shards: SHARDS, duplicateWindowSecs: RETENTION_S, extra });
    await startNodes(ctx, ['a', 'b', 'c'], configFor);
    const channel = uniqueChannel('retention');
    const stream = streamOf(channel, { shards: SHARDS });
    const pubA = await client(ctx, 'pub-a', ctx.node('a').port);
    const ch = pubA.channels.get(channel);
    const publishBatch = async (label) => {
      const p = publisher(ch, label, { count: 10, window: 5 });
      await withTimeout(p.done, T.bulk, `${label} published`);
      assert.equal(p.acked().length, 10, `${label}: all ACKed`);
      return p;
    };

    const early = await publishBatch('early');
    const before = await convergedHistories(rests(ctx, ['a', 'b', 'c']), channel);
    assert.deepEqual(before.c.map((m) => m.name), early.names, 'every node has the first batch');
    // c stops cleanly (its view continues from where it stood), b is killed (rebuilt).
    await ctx.stopNode('c');
    await ctx.killNode('b');
    await publishBatch('mid');
    // Down for longer than retention: JetStream has expired everything b and c never saw.
    const deadline = Date.now() + (RETENTION_S + 30) * 1000;
    for (;;) {
      const state = await nats.streamState(stream);
      if (state && state.messages === 0 && state.last_seq > 0) break;
      assert.ok(Date.now() < deadline, `${stream} still holds ${JSON.stringify(state)} after retention`);
      await sleep(250);
    }
    const late = await publishBatch('late');
    await ctx.startNode('c');
    await ctx.startNode('b');

    const histories = await convergedHistories(
      rests(ctx, ['a', 'b', 'c']),
      channel,
      RETENTION_S * 1000,
      (all) => all.a.length === late.names.length,
    );
    for (const [node, items] of Object.entries(histories)) {
      assert.deepEqual(items.map((m) => m.name), late.names, `node ${node}: history after the restarts is the last batch only`);
    }
    // Only the last batch is within retention; the earlier ones were ACKed and have expired.
    await checkInvariants({ histories, publishers: [late] });
    t.diagnostic(`history ${histories.a.length} messages on a, b (killed) and c (stopped cleanly)`);
  }));
});
