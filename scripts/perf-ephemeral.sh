#!/usr/bin/env bash
# What an ephemeral (typing) event costs against a stored message: runs the release broker
# and the same loadtest scenarios with plain publishes (stored: logged, fsynced by group
# commit, given a serial) and with `--ephemeral` (`extras.ephemeral = true`: fanned out, never
# stored, ACKed with a null serial), interleaved A/B for a few rounds, with `[storage] fsync`
# on (the default) and then off, and prints a Markdown table for docs/performance.md
# ("Ephemeral against stored"). A fresh broker and data directory for every run. Each cell
# of the table is the median over the rounds, then (min–max).
#
# Scenarios: chat-rooms (publish → deliver latency at a fixed offered rate, broker CPU) and
# durable-publish (closed loop: publish → ACK latency and ACKs/s). Broker only, no NATS.
# Sized for a 2-core machine: about 30 s a run, 4 runs a round per fsync setting.
# Env: PERF_ROUNDS (3), PERF_DURATION (10 s window), PERF_FSYNC_OFF (1: also fsync off),
# PERF_CHAT_ROOMS (100), PERF_CHAT_MEMBERS (10), PERF_CHAT_RATE (1 msg/s per member).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${PERF_ROUNDS:-3}"
DURATION="${PERF_DURATION:-10}"
FSYNC_OFF="${PERF_FSYNC_OFF:-1}"
KEY="perf.key:perf-secret"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
OUT="${PERF_OUT:-target/perf-ephemeral}"

step() { printf '\n==> %s\n' "$*" >&2; }

step "release build"
cargo build --release -p loadtest -p broker --quiet
BROKER="$TARGET_DIR/release/broker"
LOADTEST="$TARGET_DIR/release/loadtest"

ulimit -n "$(ulimit -Hn)"
WORK="$(mktemp -d)"
BROKER_PID=""
cleanup() {
  [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$OUT"

# Starts a broker on a fresh data directory with `[storage] fsync = $1`; sets BROKER_PID,
# BROKER_ADDR and BROKER_DIR.
start_broker() {
  local dir="$WORK/broker-$RANDOM$RANDOM"
  BROKER_DIR="$dir"
  mkdir -p "$dir/data"
  printf '[storage]\nfsync = %s\n' "$1" >"$dir/broker.toml"
  "$BROKER" --listen 127.0.0.1:0 --data-dir "$dir/data" --key "$KEY" --config "$dir/broker.toml" \
    >"$dir/out" 2>"$dir/err" &
  BROKER_PID=$!
  for _ in $(seq 100); do
    grep -q 'listening on' "$dir/out" 2>/dev/null && break
    sleep 0.1
  done
  BROKER_ADDR="$(grep -o 'listening on http://[0-9.:]*' "$dir/out" | sed 's|listening on http://||')"
  [ -n "$BROKER_ADDR" ] || { echo "broker did not start" >&2; cat "$dir/err" >&2; exit 1; }
}

# Stops the broker: SIGTERM, then SIGKILL if it has not gone within 10 s.
stop_broker() {
  kill "$BROKER_PID" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=""
  rm -rf "$BROKER_DIR"
}

LOADTEST_ARGS=(
  --scenarios chat-rooms,durable-publish --duration "$DURATION" --payload 100
  --chat-rooms "${PERF_CHAT_ROOMS:-100}" --chat-members "${PERF_CHAT_MEMBERS:-10}"
  --chat-rate "${PERF_CHAT_RATE:-1}" --durable-publishers 4 --durable-window 64
)

FSYNCS=(true)
[ "$FSYNC_OFF" = 1 ] && FSYNCS+=(false)
for fsync in "${FSYNCS[@]}"; do
  for round in $(seq "$ROUNDS"); do
    # A/B interleaved; the order alternates so neither always runs first.
    if [ $((round % 2)) = 1 ]; then modes=(stored ephemeral); else modes=(ephemeral stored); fi
    for mode in "${modes[@]}"; do
      step "fsync=$fsync round $round/$ROUNDS: $mode"
      start_broker "$fsync"
      extra=()
      [ "$mode" = ephemeral ] && extra=(--ephemeral)
      "$LOADTEST" --broker "ws://$BROKER_ADDR" --key "$KEY" --broker-pid "$BROKER_PID" \
        "${LOADTEST_ARGS[@]}" "${extra[@]}" --json "$OUT/fsync-$fsync-$mode-$round.json" >/dev/null
      stop_broker
    done
  done
done

MACHINE="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["machine"])' \
  "$(ls "$OUT"/fsync-true-stored-1.json)")"
echo
echo "Machine: $MACHINE, $(uname -sr); $(date -u +%Y-%m-%d); $ROUNDS rounds, ${DURATION} s windows."
echo "Command: PERF_ROUNDS=$ROUNDS PERF_DURATION=$DURATION PERF_FSYNC_OFF=$FSYNC_OFF scripts/perf-ephemeral.sh"
echo "Per run: $LOADTEST --broker ws://127.0.0.1:PORT --key <key> --broker-pid PID ${LOADTEST_ARGS[*]} [--ephemeral]"
echo
python3 - "$OUT" "$ROUNDS" "${FSYNCS[@]}" <<'PY'
import json, sys
out, rounds, fsyncs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def runs(fsync, mode, scenario):
    found = []
    for r in range(1, rounds + 1):
        with open(f"{out}/fsync-{fsync}-{mode}-{r}.json") as f:
            found += [x for x in json.load(f)["runs"] if x["scenario"] == scenario]
    return found

def span(values, fmt):
    """The median, and the range when the rounds differ: `median (min–max)`."""
    values = sorted(values)
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    lo, hi = fmt(values[0]), fmt(values[-1])
    return fmt(median) if lo == hi else f"{fmt(median)} ({lo}–{hi})"

def ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"

def cpu(run):
    return (run.get("server") or {}).get("cpu_pct_mean", 0.0)

print("| fsync | publish | chat-rooms deliveries/s | deliver p50 ms | p99 ms | p99.9 ms "
      "| broker CPU (chat-rooms) | durable-publish ACKs/s | ACK p50 ms | ACK p99 ms "
      "| broker CPU per ACK | errors/lost |")
print("| --- " * 12 + "|")
for fsync in fsyncs:
    for mode in ("stored", "ephemeral"):
        chat = runs(fsync, mode, "chat-rooms")
        durable = runs(fsync, mode, "durable-publish")
        bad = sum(r["errors"] + (r["lost"] or 0) for r in chat + durable)
        per_ack = [cpu(r) / 100 * 1e6 / r["delivered_per_s"] for r in durable
                   if r["delivered_per_s"] > 0]
        print("| " + " | ".join([
            "on" if fsync == "true" else "off",
            mode,
            span([r["delivered_per_s"] for r in chat], lambda v: f"{v:,.0f}"),
            span([r["latency"]["p50_ms"] for r in chat], ms),
            span([r["latency"]["p99_ms"] for r in chat], ms),
            span([r["latency"]["p999_ms"] for r in chat], ms),
            span([cpu(r) for r in chat], lambda v: f"{v:.0f} %"),
            span([r["delivered_per_s"] for r in durable], lambda v: f"{v / 1000:.0f} k"),
            span([r["latency"]["p50_ms"] for r in durable], ms),
            span([r["latency"]["p99_ms"] for r in durable], ms),
            span(per_ack, lambda v: f"{v:.1f} µs") if per_ack else "—",
            str(bad),
        ]) + " |")
PY
echo
echo "Each cell: the median over the rounds, then (min–max); JSON reports in $OUT."
