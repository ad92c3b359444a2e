// Shared helpers for the ably-js conformance suite.
//
// Nothing here talks to anything but 127.0.0.1. Every wait is event driven; the
// only timers are safety timeouts that turn a hang into a failure with
// diagnostics (broker stderr tail, client log tail, connection states).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import http from 'node:http';
import crypto from 'node:crypto';
import readline from 'node:readline';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import Ably from 'ably';

export { Ably };

export const SUITE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_ROOT = path.resolve(SUITE_DIR, '..', '..');
export const BROKER_BIN =
  process.env.BROKER_BIN || path.join(REPO_ROOT, 'target', 'release', 'broker');
export const ARTIFACTS_DIR = path.join(SUITE_DIR, 'artifacts');
/** The Rust SDK's examples (`cargo build --release -p client-sdk --examples`). */
export const RUST_INTEROP_BIN =
  process.env.RUST_INTEROP_BIN || path.join(REPO_ROOT, 'target', 'release', 'examples', 'interop');
export const TERMINAL_CHAT_BIN =
  process.env.TERMINAL_CHAT_BIN ||
  path.join(REPO_ROOT, 'target', 'release', 'examples', 'terminal_chat');

/** Both wire formats; every test is run once per entry. */
export const FORMATS = [
  { name: 'msgpack', binary: true },
  { name: 'json', binary: false },
];

/** Multiplier for every safety timeout (e.g. TIMEOUT_SCALE=3 on a slow machine). */
const SCALE = Number(process.env.TIMEOUT_SCALE || 1);
export const T = {
  event: 15000 * SCALE, // one connection / channel event
  bulk: 60000 * SCALE, // a bulk transfer (1,000 messages and the like)
  brokerStart: 20000 * SCALE,
};

/** ably-js log level captured into each client's ring buffer (4 = every frame). */
const CLIENT_LOG_LEVEL = Number(process.env.ABLY_LOG_LEVEL ?? 4);
/** Set ABLY_LOG_ECHO=1 to also print client logs live to stderr. */
const CLIENT_LOG_ECHO = process.env.ABLY_LOG_ECHO === '1';

// ---------------------------------------------------------------------------
// small utilities

export function rnd(n = 6) {
  return crypto.randomBytes(n).toString('hex');
}

/** A channel name unique to this run. */
export function uniqueChannel(prefix) {
  return `${prefix}-${rnd(5)}`;
}

/** Resolve/reject `promise`, or reject after `ms` with a message naming `what`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`safety timeout: no ${what} within ${ms} ms`)),
      ms,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Promise for the next `event` on an ably-js EventEmitter (connection or channel).
 * Register it BEFORE triggering the action that causes the event.
 */
export function nextEvent(emitter, event, ms = T.event, what = `'${event}' event`) {
  return withTimeout(
    new Promise((resolve) => emitter.once(event, resolve)),
    ms,
    what,
  );
}

/** Like nextEvent, but for the first of several events; resolves with the state change. */
export function nextOneOf(emitter, events, ms = T.event, what = `one of [${events}]`) {
  return withTimeout(
    new Promise((resolve) => {
      const listener = (change) => {
        emitter.off(listener);
        resolve(change);
      };
      emitter.on(events, listener);
    }),
    ms,
    what,
  );
}

/** Await an ably-js connection reaching `state` (resolves immediately if already there). */
export async function connectionState(client, state, ms = T.event) {
  if (client.connection.state === state) return null;
  return nextEvent(client.connection, state, ms, `connection state '${state}'`);
}

/** A Deferred: a promise with its resolve/reject exposed. */
export function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * Collect messages delivered to a channel listener.
 * `col.listener` is what you pass to channel.subscribe(); `col.waitFor(n)` resolves
 * once n messages have arrived; `col.onCount(n, fn)` runs fn synchronously inside the
 * listener that delivers the n-th message.
 */
export function collector(label = 'messages') {
  const messages = [];
  const waiters = [];
  const hooks = [];
  const nameWaiters = [];
  const matchWaiters = [];
  const listener = (msg) => {
    messages.push(msg);
    for (let i = matchWaiters.length - 1; i >= 0; i--) {
      if (matchWaiters[i].pred(msg)) {
        matchWaiters[i].resolve(msg);
        matchWaiters.splice(i, 1);
      }
    }
    for (let i = nameWaiters.length - 1; i >= 0; i--) {
      if (msg.name === nameWaiters[i].name) {
        nameWaiters[i].resolve(messages);
        nameWaiters.splice(i, 1);
      }
    }
    for (const h of hooks) {
      if (!h.done && messages.length >= h.n) {
        h.done = true;
        h.fn(messages.length);
      }
    }
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (messages.length >= waiters[i].n) {
        waiters[i].resolve(messages);
        waiters.splice(i, 1);
      }
    }
  };
  const waitFor = (n, ms = T.bulk) => {
    if (messages.length >= n) return Promise.resolve(messages);
    const d = deferred();
    waiters.push({ n, resolve: d.resolve });
    return withTimeout(d.promise, ms, `${n} ${label} (got ${messages.length}: last names ${lastNames(messages)})`)
      .catch((e) => {
        e.message = `safety timeout waiting for ${n} ${label}; got ${messages.length}; last names: ${lastNames(messages)}`;
        throw e;
      });
  };
  const onCount = (n, fn) => hooks.push({ n, fn, done: false });
  /** Resolves once a message named `name` has arrived (use a sentinel published last). */
  const waitForName = (name, ms = T.bulk) => {
    if (messages.some((m) => m.name === name)) return Promise.resolve(messages);
    const d = deferred();
    nameWaiters.push({ name, resolve: d.resolve });
    return withTimeout(d.promise, ms, `message '${name}'`).catch((e) => {
      e.message = `safety timeout waiting for message '${name}'; got ${messages.length}; last names: ${lastNames(messages)}`;
      throw e;
    });
  };
  /**
   * Resolves with the first message (already received or still to come) for which
   * `pred(msg)` is true, e.g. a presence event with a given action and clientId.
   */
  const waitForMatch = (pred, what = 'a matching message', ms = T.event) => {
    const found = messages.find(pred);
    if (found) return Promise.resolve(found);
    const d = deferred();
    matchWaiters.push({ pred, resolve: d.resolve });
    return withTimeout(d.promise, ms, what).catch((e) => {
      e.message = `safety timeout waiting for ${what}; got ${messages.length} ${label}: ${describeEvents(messages)}`;
      throw e;
    });
  };
  return { messages, listener, waitFor, waitForName, waitForMatch, onCount };
}

/** Short text for the last few presence events / messages, for failure messages. */
export function describeEvents(items, k = 12) {
  return JSON.stringify(
    items.slice(-k).map((m) => (m.action !== undefined ? `${m.action}:${m.clientId}` : m.name)),
  );
}

function lastNames(messages, k = 8) {
  return JSON.stringify(messages.slice(-k).map((m) => m.name));
}

/** Assertion helper: compare a received `data` against what was published. */
export function sameData(actual, expected) {
  if (expected instanceof Uint8Array) {
    if (!(actual instanceof Uint8Array)) return false; // Buffer is a Uint8Array
    return Buffer.from(actual).equals(Buffer.from(expected));
  }
  if (typeof expected === 'string') return actual === expected;
  try {
    return JSON.stringify(actual) === JSON.stringify(expected) && typeof actual === 'object';
  } catch {
    return false;
  }
}

/** Describe a data value for an assertion message. */
export function describeData(v) {
  if (v instanceof Uint8Array) {
    const b = Buffer.from(v);
    return `binary(${b.length}) ${b.subarray(0, 24).toString('hex')}${b.length > 24 ? '…' : ''}`;
  }
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 60 ? v.slice(0, 60) + '…' : v)}`;
  return `${v === null ? 'null' : typeof v} ${JSON.stringify(v)?.slice(0, 80)}`;
}

/** Mixed payloads: strings (incl. non-ASCII), JSON objects/arrays, Buffers and Uint8Arrays. */
export function payload(i) {
  switch (i % 5) {
    case 0:
      return `text ${i} héllo ✓ 日本語 "quoted" \\ slash`;
    case 1:
      return { i, kind: 'object', nested: { list: [1, 'two', null, true, 2.5], empty: {} } };
    case 2: {
      // includes bytes that are not valid UTF-8 and the full byte range over the run
      const len = 1 + (i % 97);
      const b = Buffer.alloc(len);
      for (let k = 0; k < len; k++) b[k] = (i * 31 + k * 7) & 0xff;
      return b;
    }
    case 3: {
      const u = new Uint8Array(1 + (i % 53));
      for (let k = 0; k < u.length; k++) u[k] = (255 - i - k) & 0xff;
      return u;
    }
    default:
      return [i, `array-${i}`, { deep: [i] }];
  }
}

// ---------------------------------------------------------------------------
// temp dirs

export async function makeTempDir(prefix = 'ably-conformance-') {
  return fsp.mkdtemp(path.join(os.tmpdir(), prefix));
}

export async function removeDir(dir) {
  if (!dir) return;
  await fsp.rm(dir, { recursive: true, force: true }).catch(() => {});
}

// ---------------------------------------------------------------------------
// keys and JWTs

/** A key with full capability passed with --key. */
export function makeKey(name = 'conformance.root') {
  const secret = rnd(16); // hex: no '.', ':' or whitespace
  return { name, secret, full: `${name}:${secret}` };
}

const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');

/**
 * Mint an Ably JWT (HS256, kid = key name, iat/exp in seconds,
 * x-ably-capability as a JSON string, optional x-ably-clientId).
 * `signingSecret` overrides the secret used for the signature (bad-signature tests).
 */
export function mintJwt({
  key,
  clientId,
  capability = { '*': ['*'] },
  ttlSeconds = 3600,
  iat,
  exp,
  signingSecret,
  claims: extraClaims = {},
}) {
  const now = Math.floor(Date.now() / 1000);
  const header = { typ: 'JWT', alg: 'HS256', kid: key.name };
  const claims = {
    iat: iat ?? now,
    exp: exp ?? now + ttlSeconds,
    'x-ably-capability': JSON.stringify(capability),
  };
  if (clientId !== undefined) claims['x-ably-clientId'] = clientId;
  // More claims on top, e.g. user claims `{'ably.room.<room>': 'value'}` (ably-chat.md §5.10).
  Object.assign(claims, extraClaims);
  const input = `${b64url(header)}.${b64url(claims)}`;
  const sig = crypto
    .createHmac('sha256', Buffer.from(signingSecret ?? key.secret, 'utf8'))
    .update(input)
    .digest('base64url');
  return `${input}.${sig}`;
}

// ---------------------------------------------------------------------------
// a local Auth0-like issuer (RS256 JWTs, JWKS over http on 127.0.0.1)

/** A TOML basic string (JSON string escapes are valid TOML escapes for our values). */
const tomlString = (s) => JSON.stringify(String(s));

/**
 * Start a stand-in for an Auth0 tenant: an RSA-2048 key pair and its JWKS served at
 * `http://127.0.0.1:<port>/.well-known/jwks.json`. Tokens it mints are RS256 with header
 * `kid`, claims iss (the issuer URL with trailing slash), aud, sub, iat, exp, `permissions`
 * and optional profile claims (nickname, given_name, family_name, picture).
 *   issuer.mint({ sub, permissions, ttlSeconds, iat, exp, aud, iss, profile, claims, kid })
 *   issuer.config({ roles, defaultCapability, leewaySecs, connection }) → TOML text for --config
 *   issuer.stats.jwksRequests   how often the broker fetched the key set
 */
export async function startAuth0Issuer({ audience = 'https://chat-broker', domain = 'tenant.test' } = {}) {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = `test-key-${rnd(4)}`;
  const { kty, n, e } = publicKey.export({ format: 'jwk' });
  const jwks = { keys: [{ kty, n, e, kid, alg: 'RS256', use: 'sig' }] };
  const stats = { jwksRequests: 0 };
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url.split('?')[0] === '/.well-known/jwks.json') {
      stats.jwksRequests++;
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify(jwks));
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  });
  server.listen(0, '127.0.0.1');
  await new Promise((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  const port = server.address().port;
  const issuerUrl = `http://127.0.0.1:${port}/`;
  const jwksUrl = `${issuerUrl}.well-known/jwks.json`;

  const mint = ({
    sub,
    permissions,
    ttlSeconds = 3600,
    iat,
    exp,
    aud = audience,
    iss = issuerUrl,
    profile = {},
    claims = {},
    kid: headerKid = kid,
  }) => {
    const now = Math.floor(Date.now() / 1000);
    const header = { alg: 'RS256', typ: 'JWT', kid: headerKid };
    const body = {
      iss,
      sub,
      aud,
      iat: iat ?? now,
      exp: exp ?? now + ttlSeconds,
      ...(permissions !== undefined ? { permissions } : {}),
      ...profile,
      ...claims,
    };
    const input = `${b64url(header)}.${b64url(body)}`;
    const sig = crypto.sign('sha256', Buffer.from(input), privateKey).toString('base64url');
    return `${input}.${sig}`;
  };

  const config = ({ roles, defaultCapability, leewaySecs, rolesClaim, connection = {} } = {}) => {
    const lines = [
      '[auth0]',
      `domain = ${tomlString(domain)}`,
      'client_id = "spa"',
      'redirect_uri = "http://127.0.0.1/auth0-landing"',
      `audience = ${tomlString(audience)}`,
      `issuer = ${tomlString(issuerUrl)}`,
      `jwks_url = ${tomlString(jwksUrl)}`,
    ];
    if (rolesClaim !== undefined) lines.push(`roles_claim = ${tomlString(rolesClaim)}`);
    if (defaultCapability !== undefined) {
      lines.push(`default_capability = ${tomlString(JSON.stringify(defaultCapability))}`);
    }
    if (leewaySecs !== undefined) lines.push(`leeway_secs = ${Number(leewaySecs)}`);
    if (roles) {
      lines.push('', '[auth0.roles]');
      for (const [role, cap] of Object.entries(roles)) {
        lines.push(`${tomlString(role)} = ${tomlString(JSON.stringify(cap))}`);
      }
    }
    const conn = Object.entries(connection);
    if (conn.length) {
      lines.push('', '[connection]');
      for (const [k, v] of conn) lines.push(`${k} = ${Number(v)}`);
    }
    return lines.join('\n') + '\n';
  };

  return {
    port,
    issuer: issuerUrl,
    jwksUrl,
    audience,
    kid,
    stats,
    mint,
    config,
    async close() {
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * A tiny HTTP server on 127.0.0.1:<ephemeral>; `handler(req, res, body)` gets the request
 * body as a Buffer. Used as an app's own authUrl endpoint in tests.
 */
export async function startHttpServer(handler) {
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      Promise.resolve(handler(req, res, Buffer.concat(chunks))).catch((e) => {
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(e?.message ?? e));
      });
    });
  });
  server.listen(0, '127.0.0.1');
  await new Promise((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  return {
    port: server.address().port,
    async close() {
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** fetch() with a safety timeout; resolves with { status, headers, body (parsed JSON or text) }. */
export async function httpJson(url, { method = 'GET', headers = {}, body, ms = T.event } = {}) {
  const res = await withTimeout(fetch(url, { method, headers, body }), ms, `HTTP ${method} ${url}`);
  const text = await res.text();
  let parsed = text;
  if ((res.headers.get('content-type') || '').includes('json')) {
    try {
      parsed = JSON.parse(text);
    } catch {}
  }
  return { status: res.status, headers: res.headers, body: parsed };
}

// ---------------------------------------------------------------------------
// broker process

/** Drop broker logs older than a day so artifacts/ does not grow without bound. */
function pruneArtifacts() {
  const cutoff = Date.now() - 24 * 3600 * 1000;
  for (const f of fs.readdirSync(ARTIFACTS_DIR)) {
    if (!f.endsWith('.log')) continue;
    const p = path.join(ARTIFACTS_DIR, f);
    try {
      if (fs.statSync(p).mtimeMs < cutoff) fs.unlinkSync(p);
    } catch {}
  }
}

const liveChildren = new Set();
process.on('exit', () => {
  for (const c of liveChildren) {
    try {
      c.kill('SIGKILL');
    } catch {}
  }
});

/**
 * Spawn the broker and wait for its `listening on http://127.0.0.1:<port>` line.
 *   keys:   array of full key strings (name:secret) given with --key
 *   config: TOML text written to a file and given with --config
 *   dataDir: data directory (created with makeTempDir when omitted; removed by
 *            stop() only when we created it)
 */
export async function startBroker({ keys = [], config, dataDir, label = 'broker' } = {}) {
  if (!fs.existsSync(BROKER_BIN)) {
    throw new Error(
      `broker binary not found at ${BROKER_BIN}; build it with ` +
        '`cargo build --release -p broker` or set BROKER_BIN',
    );
  }
  const ownDataDir = !dataDir;
  if (!dataDir) dataDir = await makeTempDir('ably-conformance-data-');
  const args = ['--listen', '127.0.0.1:0', '--data-dir', dataDir];
  for (const k of keys) args.push('--key', k);
  let configDir;
  if (config !== undefined) {
    configDir = await makeTempDir('ably-conformance-cfg-');
    const configPath = path.join(configDir, 'broker.toml');
    await fsp.writeFile(configPath, config);
    args.push('--config', configPath);
  }

  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true });
  pruneArtifacts();
  const logPath = path.join(
    ARTIFACTS_DIR,
    `${label}-${new Date().toISOString().replace(/[:.]/g, '-')}-${rnd(3)}.log`,
  );
  const logFile = fs.createWriteStream(logPath);
  logFile.write(`# ${BROKER_BIN} ${args.join(' ')}\n`);

  const child = spawn(BROKER_BIN, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    // The shell's AUTH0_*/BROKER_* settings must not leak into a test's broker.
    env: Object.fromEntries(
      Object.entries({ NO_COLOR: '1', ...process.env }).filter(
        ([name]) => !name.startsWith('AUTH0_') && !name.startsWith('BROKER_'),
      ),
    ),
  });
  liveChildren.add(child);
  const tail = [];
  const keepTail = (line) => {
    tail.push(line);
    if (tail.length > 400) tail.shift();
  };
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      liveChildren.delete(child);
      resolve({ code, signal });
    });
  });
  child.once('error', (e) => keepTail(`[spawn error] ${e.message}`));
  readline.createInterface({ input: child.stderr }).on('line', (raw) => {
    const line = raw.replace(/\x1b\[[0-9;]*m/g, ''); // strip ANSI colours
    keepTail(line);
    logFile.write(line + '\n');
  });

  const ready = new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: child.stdout });
    let found = false;
    rl.on('line', (line) => {
      logFile.write(`[stdout] ${line}\n`);
      const m = /^listening on http:\/\/127\.0\.0\.1:(\d+)\s*$/.exec(line);
      if (m && !found) {
        found = true;
        resolve(Number(m[1]));
      } else if (!found) {
        keepTail(`[stdout] ${line}`);
      }
    });
    exited.then(({ code, signal }) => {
      if (!found) reject(new Error(`broker exited before it was ready (code ${code}, signal ${signal})`));
    });
  });

  let port;
  try {
    port = await withTimeout(ready, T.brokerStart, '`listening on` line from the broker');
  } catch (e) {
    child.kill('SIGKILL');
    await exited;
    logFile.end();
    if (configDir) await removeDir(configDir);
    e.message += `\n--- broker stderr (${logPath}) ---\n${tail.slice(-60).join('\n')}`;
    throw e;
  }

  const broker = {
    port,
    host: '127.0.0.1',
    pid: child.pid,
    child,
    dataDir,
    logPath,
    exited,
    stderrTail(n = 40) {
      return tail.slice(-n).join('\n');
    },
    get running() {
      return child.exitCode === null && child.signalCode === null;
    },
    /** SIGKILL this broker process and wait until it is gone. */
    async kill() {
      if (broker.running) child.kill('SIGKILL');
      return exited;
    },
    /** Graceful stop (SIGTERM, SIGKILL after 5 s); removes dirs we created. */
    async stop({ keepData = false } = {}) {
      if (broker.running) {
        child.kill('SIGTERM');
        const t = setTimeout(() => broker.running && child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      logFile.end();
      if (configDir) await removeDir(configDir);
      if (ownDataDir && !keepData) await removeDir(dataDir);
    },
  };
  return broker;
}

// ---------------------------------------------------------------------------
// other programs (the Rust SDK's examples)

/** Whether a stdout line matches a RegExp, a substring or a predicate. */
function lineMatches(line, match) {
  if (match instanceof RegExp) return match.test(line);
  if (typeof match === 'function') return match(line);
  return line.includes(match);
}

/**
 * Spawn a program with piped stdio (its CHAT_* settings from the shell are not passed on).
 *   proc.lines                     every stdout line so far
 *   proc.waitForLine(match, opts)  resolves with { line, index } for the first stdout line at
 *                                  index >= opts.since (default 0) matching `match` (RegExp,
 *                                  substring or predicate); rejects when the program exits
 *                                  first or after the safety timeout
 *   proc.send(line)                writes `line` and a newline to its stdin
 *   proc.endInput()                closes its stdin
 *   proc.signal(sig)               sends a signal; proc.exited resolves with { code, signal }
 *   proc.tail(n)                   the last n lines of stdout and stderr, for diagnostics
 */
export function spawnProcess(bin, args = [], { label = path.basename(bin), env = {} } = {}) {
  if (!fs.existsSync(bin)) {
    throw new Error(
      `${bin} not found; build it with \`cargo build --release -p client-sdk --examples\` ` +
        'or set RUST_INTEROP_BIN / TERMINAL_CHAT_BIN',
    );
  }
  const child = spawn(bin, args, {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('CHAT_'))),
      NO_COLOR: '1',
      ...env,
    },
  });
  liveChildren.add(child);
  child.stdin.on('error', () => {}); // EPIPE once it has exited
  const lines = [];
  const output = []; // stdout and stderr, interleaved, for diagnostics
  const waiters = [];
  const keep = (line) => {
    output.push(line);
    if (output.length > 400) output.shift();
  };
  let exit;
  const exited = new Promise((resolve) => {
    // 'close' comes after the exit and after the last output lines were read.
    child.once('close', (code, signal) => {
      liveChildren.delete(child);
      exit = { code, signal };
      for (const w of waiters.splice(0)) {
        w.reject(new Error(`${label} exited (code ${code}, signal ${signal}) before ${w.what}`));
      }
      resolve(exit);
    });
  });
  child.once('error', (e) => keep(`[spawn error] ${e.message}`));
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    lines.push(line);
    keep(`[stdout] ${line}`);
    for (let i = waiters.length - 1; i >= 0; i--) {
      const w = waiters[i];
      if (lines.length - 1 >= w.since && lineMatches(line, w.match)) {
        waiters.splice(i, 1);
        w.resolve({ line, index: lines.length - 1 });
      }
    }
  });
  readline.createInterface({ input: child.stderr }).on('line', (line) => keep(`[stderr] ${line}`));

  return {
    label,
    child,
    lines,
    exited,
    get running() {
      return child.exitCode === null && child.signalCode === null;
    },
    waitForLine(match, { since = 0, what = `a stdout line matching ${match}`, ms = T.event } = {}) {
      const index = lines.findIndex((line, i) => i >= since && lineMatches(line, match));
      if (index >= 0) return Promise.resolve({ line: lines[index], index });
      if (exit) {
        return Promise.reject(new Error(`${label} exited (code ${exit.code}, signal ${exit.signal}) before ${what}`));
      }
      const d = deferred();
      waiters.push({ match, since, what, resolve: d.resolve, reject: d.reject });
      return withTimeout(d.promise, ms, `${what} from ${label}`);
    },
    send(line) {
      child.stdin.write(`${line}\n`);
    },
    endInput() {
      child.stdin.end();
    },
    signal(sig = 'SIGINT') {
      if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    },
    tail(n = 40) {
      return output.slice(-n).join('\n');
    },
  };
}

// ---------------------------------------------------------------------------
// TCP proxy used to cut a client's connection from outside the client

/**
 * A TCP proxy on 127.0.0.1:<ephemeral> forwarding to 127.0.0.1:targetPort.
 *   cutAll()            destroy every current connection, both sides
 *   hold() / release()  while held, new connections are accepted but not forwarded
 *                       (their bytes wait in the kernel/socket buffer) until release()
 *   dropDownstream(on)  discard bytes broker→client (e.g. to lose an ACK)
 *   retarget(port)      forward new connections to another port
 */
export async function startProxy(targetPort, targetHost = '127.0.0.1') {
  const pairs = new Set();
  const held = [];
  let holding = false;
  let dropping = false;
  const stats = { accepted: 0, cuts: 0 };
  const target = { port: targetPort, host: targetHost };

  const server = net.createServer((client) => {
    stats.accepted++;
    const pair = { client, upstream: null };
    pairs.add(pair);
    client.on('error', () => {});
    client.on('close', () => {
      pair.upstream?.destroy();
      pairs.delete(pair);
    });
    const forward = () => {
      if (client.destroyed) return;
      const up = net.connect(target.port, target.host);
      pair.upstream = up;
      up.on('error', () => {});
      up.on('close', () => client.destroy());
      client.pipe(up);
      up.on('data', (chunk) => {
        if (dropping || client.destroyed) return;
        if (!client.write(chunk)) {
          up.pause();
          client.once('drain', () => up.resume());
        }
      });
    };
    if (holding) held.push(forward);
    else forward();
  });
  server.listen(0, '127.0.0.1');
  await new Promise((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });

  return {
    port: server.address().port,
    stats,
    get openConnections() {
      return pairs.size;
    },
    cutAll() {
      let n = 0;
      for (const p of [...pairs]) {
        p.client.destroy();
        p.upstream?.destroy();
        pairs.delete(p);
        n++;
      }
      stats.cuts += n;
      return n;
    },
    hold() {
      holding = true;
    },
    release() {
      holding = false;
      for (const f of held.splice(0)) f();
    },
    dropDownstream(on) {
      dropping = !!on;
    },
    /** Forward new connections to another port (e.g. a restarted broker). */
    retarget(port) {
      target.port = port;
    },
    async close() {
      holding = false;
      held.length = 0;
      for (const p of [...pairs]) {
        p.client.destroy();
        p.upstream?.destroy();
      }
      pairs.clear();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

// ---------------------------------------------------------------------------
// ably-js clients

/** ClientOptions pointing ably-js at a broker (or proxy) port. */
export function brokerOptions(port, format, extra = {}) {
  return {
    endpoint: '127.0.0.1',
    port,
    tls: false,
    useBinaryProtocol: format.binary,
    disableConnectivityCheck: true,
    fallbackHosts: [],
    transports: ['web_socket'],
    ...extra,
  };
}

/**
 * Per-test context: creates clients and proxies, closes them at the end, and
 * builds a diagnostics block (broker stderr tail, client log tails, states)
 * which is appended to the message of any error thrown by the test body.
 */
export class Ctx {
  constructor(broker) {
    this.broker = broker;
    this.clients = [];
    this.proxies = [];
    this.processes = [];
    this.notes = [];
    this.cleanups = [];
  }

  _logOptions(label, onLog) {
    const lines = [];
    const handler = (msg) => {
      onLog?.(msg);
      lines.push(`${new Date().toISOString().slice(11, 23)} ${msg}`);
      if (lines.length > 120) lines.shift();
      if (CLIENT_LOG_ECHO) process.stderr.write(`[${label}] ${msg}\n`);
    };
    // A tap needs the frame log (level 4) whatever ABLY_LOG_LEVEL says.
    const logLevel = onLog ? Math.max(CLIENT_LOG_LEVEL, 4) : CLIENT_LOG_LEVEL;
    return { lines, opts: { logLevel, logHandler: handler } };
  }

  /**
   * An Ably.Realtime client; `port` defaults to the context's broker. `onLog(line)`
   * sees every ably-js log line (the client then logs at level 4, every frame).
   */
  realtime(format, extra = {}, { label, port, onLog } = {}) {
    label = label ?? `rt${this.clients.length}-${format.name}`;
    const { lines, opts } = this._logOptions(label, onLog);
    const client = new Ably.Realtime(
      brokerOptions(port ?? this.broker.port, format, { ...opts, ...extra }),
    );
    const states = [];
    client.connection.on((change) => {
      states.push(
        `${change.previous}->${change.current}` +
          (change.reason ? ` (${change.reason.code} ${change.reason.message})` : ''),
      );
      if (states.length > 40) states.shift();
    });
    this.clients.push({ label, client, lines, states, kind: 'realtime' });
    return client;
  }

  /** An Ably.Rest client; `port` defaults to the context's broker. */
  rest(format, extra = {}, { label, port } = {}) {
    label = label ?? `rest${this.clients.length}-${format.name}`;
    const { lines, opts } = this._logOptions(label);
    const client = new Ably.Rest(
      brokerOptions(port ?? this.broker.port, format, { ...opts, ...extra }),
    );
    this.clients.push({ label, client, lines, states: [], kind: 'rest' });
    return client;
  }

  async proxy(targetPort = this.broker.port) {
    const p = await startProxy(targetPort);
    this.proxies.push(p);
    return p;
  }

  /** A program started with spawnProcess(); in diagnostics, and killed at cleanup. */
  spawn(bin, args, opts) {
    const proc = spawnProcess(bin, args, opts);
    this.processes.push(proc);
    return proc;
  }

  note(s) {
    this.notes.push(s);
  }

  /**
   * Run `fn` at cleanup, before the clients are closed, last registered first (e.g. a
   * ChatClient's dispose(), which detaches its rooms' channels). Bounded; errors ignored.
   */
  atCleanup(fn) {
    this.cleanups.push(fn);
  }

  diagnostics() {
    const out = [];
    if (this.notes.length) out.push('--- notes ---', ...this.notes);
    for (const c of this.clients) {
      if (c.kind === 'realtime') {
        const conn = c.client.connection;
        out.push(
          `--- client ${c.label}: state=${conn.state} id=${conn.id} ` +
            `errorReason=${conn.errorReason ? `${conn.errorReason.code} ${conn.errorReason.message}` : '-'}`,
          `    transitions: ${c.states.join(' | ')}`,
        );
      } else {
        out.push(`--- client ${c.label} (rest)`);
      }
      out.push(...c.lines.slice(-25).map((l) => `    ${l.length > 400 ? l.slice(0, 400) + '…' : l}`));
    }
    for (const p of this.processes) {
      out.push(`--- process ${p.label} (${p.running ? 'running' : 'exited'}) ---`, p.tail(40));
    }
    if (this.broker) {
      out.push(
        `--- broker pid ${this.broker.pid} (${this.broker.running ? 'running' : 'exited'}), ` +
          `full log: ${this.broker.logPath} ---`,
        this.broker.stderrTail(40),
      );
    }
    return out.join('\n');
  }

  async cleanup() {
    for (const fn of this.cleanups.splice(0).reverse()) {
      await withTimeout(Promise.resolve().then(fn), 5000, 'cleanup step').catch(() => {});
    }
    await Promise.all(
      this.clients.map(async ({ client, kind }) => {
        if (kind !== 'realtime') {
          try {
            client.close?.();
          } catch {}
          return;
        }
        const conn = client.connection;
        if (['closed', 'failed'].includes(conn.state)) return;
        const done = nextOneOf(conn, ['closed', 'failed'], 5000).catch(() => {});
        try {
          client.close();
        } catch {}
        await done;
      }),
    );
    await Promise.all(this.proxies.map((p) => p.close()));
    await Promise.all(
      this.processes.map(async (p) => {
        p.signal('SIGKILL');
        await p.exited;
      }),
    );
  }
}

/**
 * Run a test body with a Ctx, appending diagnostics to any failure and always
 * cleaning up. `getBroker` is a function because brokers are started in before().
 */
export function withCtx(getBroker, body) {
  return withContext(
    () => new Ctx(typeof getBroker === 'function' ? getBroker() : getBroker),
    body,
  );
}

/**
 * Run a test body with the context `makeCtx()` returns (anything with
 * `diagnostics()` and `cleanup()`), appending its diagnostics to any failure and
 * always cleaning it up.
 */
export function withContext(makeCtx, body) {
  return async (t) => {
    const ctx = makeCtx();
    try {
      await body(ctx, t);
    } catch (e) {
      const diag = ctx.diagnostics();
      if (e && typeof e === 'object') {
        try {
          e.message = `${e.message}\n${diag}`;
        } catch {}
        throw e;
      }
      throw new Error(`${String(e)}\n${diag}`);
    } finally {
      await ctx.cleanup();
    }
  };
}

/** Fetch every page of a history query, checking each page is at most `limit` long. */
export async function allHistory(target, params, ms = T.bulk) {
  const items = [];
  const pageSizes = [];
  let page = await withTimeout(target.history(params), T.event, 'history() page');
  const deadline = Date.now() + ms;
  for (;;) {
    items.push(...page.items);
    pageSizes.push(page.items.length);
    if (!page.hasNext()) break;
    if (Date.now() > deadline) throw new Error('history pagination did not finish');
    page = await withTimeout(page.next(), T.event, 'history next() page');
    if (!page) break;
  }
  return { items, pageSizes };
}

/** Publish many messages keeping at most `window` in flight; resolves with the results. */
export async function publishAll(channel, entries, window = 100) {
  const results = new Array(entries.length);
  let next = 0;
  const worker = async () => {
    while (next < entries.length) {
      const i = next++;
      const [name, data] = entries[i];
      results[i] = await channel.publish(name, data);
    }
  };
  await Promise.all(Array.from({ length: Math.min(window, entries.length) }, worker));
  return results;
}

/**
 * Await a promise that should reject; resolves with the error. Fails (assertion-style
 * Error) if it resolves or if nothing happens within the safety timeout.
 */
export async function rejectionOf(promise, what, ms = T.event) {
  try {
    await withTimeout(promise, ms, what);
  } catch (e) {
    if (String(e?.message).startsWith('safety timeout')) throw e;
    return e;
  }
  throw new Error(`${what}: expected a rejection, but it succeeded`);
}

/** Await `promise`, expecting a rejection with `code` (and `statusCode` when given). */
export async function expectCode(promise, code, what, statusCode) {
  const err = await rejectionOf(promise, what);
  assert.equal(err.code, code, `${what}: rejected with ${err.code} ${err.message}`);
  if (statusCode !== undefined) assert.equal(err.statusCode, statusCode, `${what}: statusCode`);
  return err;
}

/** Extract an ErrorInfo-like code from a rejection or state change. */
export function codeOf(x) {
  return x?.code ?? x?.reason?.code;
}
