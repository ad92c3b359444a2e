// Cluster-mode helpers for the ably-js suite (issue 17, `../shared/cluster.md` §3.9): real
// nats-server processes as one JetStream cluster on loopback, broker nodes given every
// server, and a context that kills all of them at the end of a test, even a failed one.
//
// Readiness of the NATS cluster follows `tests/src/nats.rs`: `/healthz` alone is not
// enough (a server just restarted can answer 200 once before it has learnt of its streams),
// so a cluster is ready when it has a meta leader that every live server names and that
// counts the others as current, and every stream has a leader that its live replicas name and
// that counts each of them as current. Everything is polled over HTTP from the servers'
// monitoring ports, bounded by a safety timeout.

import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import zlib from 'node:zlib';
import assert from 'node:assert/strict';
import {
  ARTIFACTS_DIR,
  Ctx,
  REPO_ROOT,
  T,
  allHistory,
  makeTempDir,
  removeDir,
  rnd,
  startBroker,
  withTimeout,
  withContext,
} from './helpers.js';

/**
 * The nats-server binary: `$NATS_SERVER` (scripts/test.sh exports it), else the path that
 * `scripts/nats-server.sh` prints, which installs the pinned release on first use. Looked up
 * once, when the first cluster starts.
 */
let natsServer = process.env.NATS_SERVER || '';
function natsServerBinary() {
  if (!natsServer) {
    natsServer = execFileSync('bash', [path.join(REPO_ROOT, 'scripts', 'nats-server.sh')], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
      .toString()
      .trim();
  }
  return natsServer;
}

/** Pause between two readiness probes of an external process. */
const POLL_MS = 100;
/** How long one monitoring request may take: a paused server never answers. */
const PROBE_MS = 1000;
/** How long a NATS cluster may take to become ready (elections take 4–9 s each). */
export const NATS_READY_MS = 60000 * Number(process.env.TIMEOUT_SCALE || 1);

// Every process started here, killed when node exits, whatever happened.
const liveChildren = new Set();
process.on('exit', () => {
  for (const c of liveChildren) {
    try {
      c.kill('SIGKILL');
    } catch {}
  }
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** `count` distinct free loopback ports: each bound to 127.0.0.1:0, then all released. */
export async function freePorts(count) {
  const servers = [];
  try {
    for (let i = 0; i < count; i++) {
      const server = net.createServer();
      servers.push(server);
      await new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', resolve);
      });
    }
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(() => resolve()))));
  }
}

/** GET a monitoring URL as JSON, or null when it does not answer within PROBE_MS. */
async function probeJson(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(PROBE_MS) });
    return { status: res.status, body: await res.json().catch(() => null) };
  } catch {
    return null;
  }
}

function serverConfig({ name, clientPort, httpPort, routePort, store, routes, advertise }) {
  return `server_name: ${name}
listen: "127.0.0.1:${clientPort}"
http: "127.0.0.1:${httpPort}"
# Notice a dead or paused peer (route or client) in seconds, not minutes.
ping_interval: "2s"
ping_max: 2
jetstream {
  store_dir: ${JSON.stringify(store)}
  max_memory_store: 64MB
  max_file_store: 1GB
}
cluster {
  name: ably-js-suite
  listen: "127.0.0.1:${routePort}"
  routes: [${routes.join(', ')}]
  # Whether clients learn the other servers' URLs (and may fail over to them).
  no_advertise: ${!advertise}
}
`;
}

/** The streams of account `$G` in a `/jsz?streams=true` report. */
function streamDetails(report) {
  return (report?.account_details ?? [])
    .filter((a) => a.name === '$G')
    .flatMap((a) => a.stream_detail ?? []);
}

/**
 * Start `n` nats-servers as one JetStream cluster on free loopback ports, each with its own
 * config and store directory in a temp dir, and wait until it is ready. Logs go to
 * `artifacts/nats-<label>-<name>-….log`. With `advertise: false` the servers do not tell
 * their clients of the others (`no_advertise`), so a client given one URL knows only that one.
 *   cluster.urls() / url(i)           nats://127.0.0.1:<port>
 *   kill(i)                           SIGKILL (also when paused), resolves once it exited
 *   restart(i)                        spawn again on the same ports and store (no wait)
 *   pause(i) / resume(i)              SIGSTOP / SIGCONT
 *   waitReady()                       the readiness rule above, for the live servers
 *   streamLeader(stream)              index of the elected leader of a stream, or null
 *   streamState(stream)               { messages, first_seq, last_seq } from a live leader
 *   stop()                            kill everything and remove the temp dir
 */
export async function startNatsCluster(n = 3, { label = 'nats', advertise = true } = {}) {
  const binary = natsServerBinary();
  if (!fs.existsSync(binary)) {
    throw new Error(`nats-server not found at ${JSON.stringify(binary)}; unset NATS_SERVER or point it at a binary`);
  }
  const dir = await makeTempDir('ably-conformance-nats-');
  const ports = await freePorts(3 * n);
  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const servers = Array.from({ length: n }, (_, i) => ({
    name: `${label}-n${i + 1}`,
    clientPort: ports[3 * i],
    routePort: ports[3 * i + 1],
    httpPort: ports[3 * i + 2],
    store: path.join(dir, `n${i + 1}`, 'store'),
    config: path.join(dir, `n${i + 1}`, 'nats.conf'),
    logPath: path.join(ARTIFACTS_DIR, `nats-${label}-n${i + 1}-${stamp}-${rnd(3)}.log`),
    child: null,
    exited: null,
    paused: false,
  }));
  for (const [i, s] of servers.entries()) {
    fs.mkdirSync(s.store, { recursive: true });
    const routes = servers
      .filter((_, j) => j !== i)
      .map((o) => `"nats-route://127.0.0.1:${o.routePort}"`);
    fs.writeFileSync(s.config, serverConfig({ ...s, routes, advertise }));
  }

  const spawnServer = (i) => {
    const s = servers[i];
    if (s.child) throw new Error(`${s.name} is already running`);
    const log = fs.openSync(s.logPath, 'a');
    const child = spawn(binary, ['-c', s.config], { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    liveChildren.add(child);
    s.child = child;
    s.paused = false;
    s.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        liveChildren.delete(child);
        resolve({ code, signal });
      });
    });
  };

  const live = () => servers.map((_, i) => i).filter((i) => servers[i].child && !servers[i].paused);
  const indexOf = (name) => servers.findIndex((s) => s.name === name);

  const jszReports = async () => {
    const answers = await Promise.all(
      live().map(async (i) => {
        const r = await probeJson(`http://127.0.0.1:${servers[i].httpPort}/jsz?streams=true`);
        return r?.body ? [i, r.body] : null;
      }),
    );
    return answers.filter(Boolean);
  };

  // The server whose view of a Raft group (picked from a report by `group`) names itself
  // leader and is named leader by a quorum of the group; with that view.
  const elected = (reports, group) => {
    for (const [i, report] of reports) {
      const name = servers[i].name;
      const view = group(report);
      if (!view || view.leader !== name) continue;
      const members = (view.replicas?.length ?? 0) + 1;
      const votes = reports.filter(([, other]) => group(other)?.leader === name).length;
      if (votes > members / 2) return [i, view];
    }
    return null;
  };
  const dissent = (reports, leader, group) => {
    const want = servers[leader].name;
    for (const [i, report] of reports) {
      const view = group(report);
      if (view && view.leader !== want) {
        return `${servers[i].name} names ${JSON.stringify(view.leader)} as leader, not ${want}`;
      }
    }
    return null;
  };
  const streamCluster = (report, stream) =>
    streamDetails(report).find((d) => d.name === stream)?.cluster ?? null;

  const notReady = async () => {
    const liveNow = live();
    if (liveNow.length === 0) return 'no server is running';
    const reports = await jszReports();
    if (reports.length < liveNow.length) return 'a running server did not answer /jsz';
    const meta = elected(reports, (r) => r.meta_cluster);
    if (!meta) return 'no JetStream meta leader';
    const [metaLeader, metaView] = meta;
    const metaDissent = dissent(reports, metaLeader, (r) => r.meta_cluster);
    if (metaDissent) return `meta group: ${metaDissent}`;
    for (const j of liveNow.filter((j) => j !== metaLeader)) {
      const current = (metaView.replicas ?? []).some(
        (r) => r.name === servers[j].name && r.current === true,
      );
      if (!current) {
        return `meta leader ${servers[metaLeader].name} does not count ${servers[j].name} as current`;
      }
    }
    const streams = [...new Set(reports.flatMap(([, r]) => streamDetails(r).map((d) => d.name)))].sort();
    for (const stream of streams) {
      const got = elected(reports, (r) => streamCluster(r, stream));
      if (!got) return `stream ${stream} has no leader`;
      const [leader, view] = got;
      const d = dissent(reports, leader, (r) => streamCluster(r, stream));
      if (d) return `stream ${stream}: ${d}`;
      for (const replica of view.replicas ?? []) {
        const j = indexOf(replica.name);
        if (j >= 0 && liveNow.includes(j) && replica.current !== true) {
          return `stream ${stream}: leader ${servers[leader].name} does not count ${replica.name} as current`;
        }
      }
    }
    // Last, as a server logs a warning for every failed health check.
    for (const i of liveNow) {
      const r = await probeJson(`http://127.0.0.1:${servers[i].httpPort}/healthz`);
      if (!r || r.status !== 200) {
        return `${servers[i].name}: /healthz ${r ? `${r.status} ${JSON.stringify(r.body)}` : 'no answer'}`;
      }
    }
    return null;
  };

  const cluster = {
    servers,
    dir,
    url: (i) => `nats://127.0.0.1:${servers[i].clientPort}`,
    urls: () => servers.map((_, i) => `nats://127.0.0.1:${servers[i].clientPort}`),
    pid: (i) => servers[i].child?.pid ?? null,
    running: (i) => !!servers[i].child,

    async waitReady(ms = NATS_READY_MS) {
      const deadline = Date.now() + ms;
      for (;;) {
        const missing = await notReady();
        if (missing === null) return;
        if (Date.now() > deadline) {
          throw new Error(`safety timeout: nats-server cluster not ready after ${ms} ms: ${missing}`);
        }
        await sleep(POLL_MS);
      }
    },

    /** Index of the server leading `stream` now (see `elected`), or null during an election. */
    async streamLeader(stream) {
      const got = elected(await jszReports(), (r) => streamCluster(r, stream));
      return got ? got[0] : null;
    },

    async waitStreamLeader(stream, ms = NATS_READY_MS) {
      const deadline = Date.now() + ms;
      for (;;) {
        const leader = await cluster.streamLeader(stream);
        if (leader !== null) return leader;
        if (Date.now() > deadline) throw new Error(`safety timeout: stream ${stream} has no leader after ${ms} ms`);
        await sleep(POLL_MS);
      }
    },

    /** `state` of `stream` as its elected leader reports it, or null. */
    async streamState(stream) {
      const reports = await jszReports();
      const got = elected(reports, (r) => streamCluster(r, stream));
      if (!got) return null;
      const report = reports.find(([i]) => i === got[0])[1];
      return streamDetails(report).find((d) => d.name === stream)?.state ?? null;
    },

    /** Each live server's `state` of `stream` (its own replica), for diagnostics. */
    async streamStates(stream) {
      const out = {};
      for (const [i, report] of await jszReports()) {
        const d = streamDetails(report).find((x) => x.name === stream);
        out[servers[i].name] = d
          ? { messages: d.state?.messages, first_seq: d.state?.first_seq, last_seq: d.state?.last_seq, leader: d.cluster?.leader }
          : null;
      }
      return out;
    },

    /** Where the consumers on `stream` live: consumer name → the server leading it. */
    async consumerHosts(stream) {
      const out = {};
      for (const [i] of await jszReports()) {
        const r = await probeJson(`http://127.0.0.1:${servers[i].httpPort}/jsz?streams=true&consumers=true`);
        const d = streamDetails(r?.body).find((x) => x.name === stream);
        for (const c of d?.consumer_detail ?? []) {
          if (c.cluster?.leader) out[c.name] = c.cluster.leader;
        }
      }
      return out;
    },

    async kill(i) {
      const s = servers[i];
      if (!s.child) throw new Error(`${s.name} is not running`);
      s.child.kill('SIGKILL');
      const exit = await withTimeout(s.exited, T.event, `${s.name} exit after SIGKILL`);
      s.child = null;
      s.paused = false;
      return exit;
    },

    restart(i) {
      spawnServer(i);
    },

    pause(i) {
      servers[i].child.kill('SIGSTOP');
      servers[i].paused = true;
    },

    resume(i) {
      servers[i].child.kill('SIGCONT');
      servers[i].paused = false;
    },

    /** The last `n` lines of each server's log, health-check noise left out. */
    logTails(n = 25) {
      return servers.map((s) => {
        let lines = [];
        try {
          lines = fs.readFileSync(s.logPath, 'utf8').split('\n').filter((l) => l && !l.includes('Healthcheck failed'));
        } catch {}
        return `--- nats-server ${s.name} (${s.child ? (s.paused ? 'paused' : 'running') : 'down'}), ` +
          `full log: ${s.logPath} ---\n${lines.slice(-n).join('\n')}`;
      });
    },

    async stop() {
      await Promise.all(
        servers.map(async (s) => {
          if (!s.child) return;
          s.child.kill('SIGKILL');
          await s.exited;
          s.child = null;
        }),
      );
      await removeDir(dir);
    },
  };

  try {
    for (let i = 0; i < n; i++) spawnServer(i);
    await cluster.waitReady();
  } catch (e) {
    e.message += `\n${cluster.logTails().join('\n')}`;
    await cluster.stop();
    throw e;
  }
  return cluster;
}

// ---------------------------------------------------------------------------
// broker nodes

/** The stream (shard) a channel lives in, as `broker/src/backend/jetstream/subject.rs` picks it. */
export function streamOf(channel, { prefix = 'ably', shards }) {
  return `${prefix.toUpperCase()}_CH_${zlib.crc32(Buffer.from(channel, 'utf8')) % shards}`;
}

/**
 * TOML for a cluster node: `[cluster]` plus any extra tables given as text. Replicas are
 * always stated: a node given one URL would otherwise default to 1 and, through
 * `create_or_update_key_value`, turn the shared connection registry into R1.
 */
export function nodeConfig({
  nats,
  nodeId,
  shards,
  replicas = 3,
  publishDeadlineMs,
  duplicateWindowSecs,
  prefix,
  extra = '',
}) {
  const lines = [
    '[cluster]',
    `nats = ${JSON.stringify(nats)}`,
    `node_id = ${JSON.stringify(nodeId)}`,
    `shards = ${shards}`,
    `replicas = ${replicas}`,
  ];
  if (publishDeadlineMs !== undefined) lines.push(`publish_deadline_ms = ${publishDeadlineMs}`);
  if (duplicateWindowSecs !== undefined) lines.push(`duplicate_window_secs = ${duplicateWindowSecs}`);
  if (prefix !== undefined) lines.push(`prefix = ${JSON.stringify(prefix)}`);
  return `${extra}\n${lines.join('\n')}\n`;
}

/**
 * A test context for a cluster: a NATS cluster, broker nodes and clients, all killed at the end
 * (ably-js clients closed, brokers and nats-servers SIGKILLed, temp dirs removed). Its
 * diagnostics add every node's and every nats-server's log tail.
 */
export class ClusterCtx extends Ctx {
  constructor() {
    super(undefined);
    this.nats = null;
    /** Broker nodes by name: { name, config, dataDir, broker (the live process or the last one) }. */
    this.nodes = new Map();
    this.dirs = [];
  }

  async startNats(n = 3, label = 'nats', { advertise = true } = {}) {
    this.nats = await startNatsCluster(n, { label, advertise });
    return this.nats;
  }

  /**
   * Start broker node `name` (again, on its data dir, when it ran before) with `config`
   * (TOML text; the node keeps the last one given). Resolves with the broker process once it
   * listens, which the broker does only after its appliers caught up with JetStream.
   */
  async startNode(name, { keys, config } = {}) {
    let node = this.nodes.get(name);
    if (!node) {
      const dataDir = await makeTempDir(`ably-conformance-${name}-`);
      this.dirs.push(dataDir);
      node = { name, dataDir, keys, config, broker: null, all: [] };
      this.nodes.set(name, node);
    }
    if (keys) node.keys = keys;
    if (config !== undefined) node.config = config;
    if (node.broker?.running) throw new Error(`node ${name} is already running`);
    node.broker = await startBroker({ keys: node.keys, config: node.config, dataDir: node.dataDir, label: `cluster-${name}` });
    node.all.push(node.broker);
    this.broker ??= node.broker;
    return node.broker;
  }

  node(name) {
    return this.nodes.get(name).broker;
  }

  /** SIGKILL node `name`; resolves once it exited. */
  async killNode(name) {
    const b = this.node(name);
    const exit = await b.kill();
    if (exit.signal !== 'SIGKILL') throw new Error(`node ${name} exited with ${JSON.stringify(exit)}, not by SIGKILL`);
    return exit;
  }

  /** SIGTERM node `name` and wait for its clean exit (bounded). */
  async stopNode(name) {
    const b = this.node(name);
    b.child.kill('SIGTERM');
    const exit = await withTimeout(b.exited, T.event, `node ${name} exit after SIGTERM`);
    if (exit.code !== 0) throw new Error(`node ${name} did not stop cleanly: ${JSON.stringify(exit)}\n${b.stderrTail(20)}`);
    return exit;
  }

  diagnostics() {
    const out = [super.diagnostics()];
    for (const node of this.nodes.values()) {
      for (const b of node.all) {
        if (b === this.broker) continue; // already in the base diagnostics
        out.push(
          `--- node ${node.name} pid ${b.pid} (${b.running ? 'running' : 'exited'}), full log: ${b.logPath} ---`,
          b.stderrTail(25),
        );
      }
    }
    if (this.nats) out.push(...this.nats.logTails());
    return out.join('\n');
  }

  async cleanup() {
    try {
      await super.cleanup();
    } finally {
      for (const node of this.nodes.values()) {
        for (const b of node.all) {
          await b.kill().catch(() => {});
          await b.stop({ keepData: true }).catch(() => {});
        }
      }
      await this.nats?.stop().catch(() => {});
      for (const d of this.dirs) await removeDir(d);
    }
  }
}

/** Like `withCtx`, with a ClusterCtx: diagnostics on failure, everything killed at the end. */
export function withCluster(body) {
  return withContext(() => new ClusterCtx(), body);
}

// ---------------------------------------------------------------------------
// load and checks

/**
 * Publish up to `count` messages named `<label>-<i>` on an ably-js channel, at most `window`
 * in flight (each worker waits `paceMs` between its publishes, a rate limit), and record
 * each outcome: `acked`, `nacked` (with the error) or still pending.
 *   p.done            resolves once every publish issued has settled (bounded by the caller)
 *   p.stop()          issue no further publishes
 *   p.ackedCount()    ACKs so far
 *   p.onAcked(n, fn)  fn() once n are ACKed
 *   p.names           every name issued, in publish order
 */
export function publisher(channel, label, { count, window = 10, paceMs = 0 }) {
  const names = [];
  const outcome = new Map(); // name → { acked: true } | { nacked: err }
  const hooks = [];
  let acked = 0;
  let stopped = false;
  const worker = async () => {
    while (!stopped && names.length < count) {
      const name = `${label}-${String(names.length).padStart(5, '0')}`;
      names.push(name);
      try {
        await channel.publish(name, `${name} data`);
        outcome.set(name, { acked: true });
        acked++;
        for (const h of hooks) {
          if (!h.done && acked >= h.n) {
            h.done = true;
            h.fn();
          }
        }
      } catch (err) {
        outcome.set(name, { nacked: err });
      }
      if (paceMs > 0 && !stopped) await sleep(paceMs);
    }
  };
  const done = Promise.all(Array.from({ length: Math.min(window, count) }, worker));
  const pick = (pred) => names.filter((n) => pred(outcome.get(n)));
  return {
    label,
    names,
    outcome,
    done,
    stop() {
      stopped = true;
    },
    ackedCount: () => acked,
    onAcked(n, fn) {
      if (acked >= n) fn();
      else hooks.push({ n, fn, done: false });
    },
    acked: () => pick((o) => o?.acked),
    nacked: () => pick((o) => o?.nacked),
    pending: () => pick((o) => !o),
    nackCodes: () => [...new Set(pick((o) => o?.nacked).map((n) => outcome.get(n).nacked.code))],
  };
}

/** Every message of `channel`, oldest first, over REST from the broker behind `rest`. */
export async function restHistory(rest, channel) {
  const { items } = await allHistory(rest.channels.get(channel), { direction: 'forwards', limit: 1000 });
  return items.map((m) => ({ name: m.name, serial: m.serial, data: m.data }));
}

/**
 * Read `channel`'s history over REST from every node in `rests` (node name → Rest) until all
 * agree and every node holds every message ACKed to `publishers`, or until `ms` passed: a
 * node's view trails JetStream by its applier, which after a failure first has to open its
 * consumer again. Returns { histories: node → items of the last read, waitedMs }; the caller's
 * checks then say what is wrong if it timed out.
 */
export async function settledHistories(rests, channel, publishers, ms = T.bulk) {
  const started = Date.now();
  const acked = publishers.flatMap((p) => p.acked());
  for (;;) {
    const histories = {};
    for (const [node, rest] of Object.entries(rests)) histories[node] = await restHistory(rest, channel);
    const keys = Object.values(histories).map(historyKey);
    const complete = Object.values(histories).every((items) => {
      const names = new Set(items.map((m) => m.name));
      return acked.every((n) => names.has(n));
    });
    const waitedMs = Date.now() - started;
    if ((complete && keys.every((k) => k === keys[0])) || waitedMs > ms) return { histories, waitedMs };
    await sleep(250);
  }
}

/**
 * Read `channel`'s history from every node until all agree and `accept(histories)` holds, or
 * until `ms` passed; returns node → items of the last read.
 */
export async function convergedHistories(rests, channel, ms = T.bulk, accept = () => true) {
  const deadline = Date.now() + ms;
  for (;;) {
    const all = {};
    for (const [node, rest] of Object.entries(rests)) all[node] = await restHistory(rest, channel);
    const keys = Object.values(all).map(historyKey);
    if ((keys.every((k) => k === keys[0]) && accept(all)) || Date.now() > deadline) return all;
    await sleep(250);
  }
}

const historyKey = (items) => items.map((m) => `${m.serial} ${m.name}`).join('\n');

/** Names in `list` that occur more than once. */
export function duplicates(list) {
  const seen = new Set();
  const dups = new Set();
  for (const x of list) (seen.has(x) ? dups : seen).add(x);
  return [...dups];
}

/** Where `got` first differs from `want`, in words. */
export function firstDifference(got, want) {
  const i = got.findIndex((x, k) => x !== want[k]);
  const at = i < 0 ? Math.min(got.length, want.length) : i;
  return `${got.length} vs ${want.length} items; first difference at #${at}: ` +
    `${JSON.stringify(got[at])} vs ${JSON.stringify(want[at])}`;
}

/**
 * The invariants of cluster.md §3.9, checked after a scenario:
 * - every node's history of the channel is the same (names and serials, in order);
 * - no message is in it twice, and each is one the test published;
 * - every ACKed publish is in it (so exactly once);
 * - each publisher's ACKed messages are in its publish order;
 * - every subscriber (attached before the first publish) received exactly that history, in
 *   order: no gap, no duplicate. Waits (bounded) for each to receive the last message.
 * Returns the history.
 */
export async function checkInvariants({ histories, publishers, subscribers = {} }) {
  const [first, ...others] = Object.keys(histories);
  const names = histories[first].map((m) => m.name);
  for (const node of others) {
    const theirs = histories[node];
    assert.ok(
      historyKey(theirs) === historyKey(histories[first]),
      `nodes ${first} and ${node} disagree on the channel's history (order or serials): ` +
        firstDifference(theirs.map((m) => `${m.serial} ${m.name}`), histories[first].map((m) => `${m.serial} ${m.name}`)),
    );
  }
  const dups = duplicates(names);
  assert.deepEqual(dups.slice(0, 10), [], `stored twice (${dups.length} in all)`);
  const issued = new Set(publishers.flatMap((p) => p.names));
  const phantoms = names.filter((n) => !issued.has(n));
  assert.deepEqual(phantoms.slice(0, 10), [], 'history holds messages nobody published');
  const stored = new Set(names);
  const position = new Map(names.map((n, i) => [n, i]));
  for (const p of publishers) {
    const lost = p.acked().filter((n) => !stored.has(n));
    assert.deepEqual(lost.slice(0, 10), [], `${p.label}: ACKed but not in history (${lost.length} of ${p.acked().length})`);
    const order = p.acked().map((n) => position.get(n));
    const bad = order.findIndex((x, i) => i > 0 && x < order[i - 1]);
    assert.equal(bad, -1, `${p.label}: ACKed messages out of publish order at ${p.acked()[bad]}`);
  }
  const last = names.at(-1);
  for (const [label, col] of Object.entries(subscribers)) {
    if (last !== undefined) await col.waitForName(last, T.bulk);
    const got = col.messages.map((m) => m.name);
    if (got.length !== names.length || got.some((n, i) => n !== names[i])) {
      const d = duplicates(got);
      const received = new Set(got);
      const missing = names.filter((n) => !received.has(n));
      assert.fail(
        `subscriber ${label} did not receive the history exactly once in order: duplicates ` +
          `${JSON.stringify(d.slice(0, 5))} (${d.length}), missing ${JSON.stringify(missing.slice(0, 5))} ` +
          `(${missing.length}); ${firstDifference(got, names)}`,
      );
    }
  }
  return histories[first];
}
