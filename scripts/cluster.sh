#!/usr/bin/env bash
# Starts a cluster on loopback to try cluster mode (docs/operations.md, "Cluster mode"):
# 3 nats-servers forming one JetStream cluster and 3 broker nodes on it, each broker given all
# three servers and the same API key. Runs in the foreground; Ctrl-C stops everything, the
# brokers first. State is kept under ./data/cluster-demo, so a second run continues where the
# first stopped; remove that directory to start from nothing.
#
#   nats-server n1..n3   clients 127.0.0.1:4222-4224, routes 6222-6224, monitoring 8222-8224
#   broker node-1..3     http://127.0.0.1:8081-8083, data in ./data/cluster-demo/broker-N
#
# Logs: ./data/cluster-demo/nats-N.log and broker-N.log. The nats-server is the pinned release
# from scripts/nats-server.sh; the broker is the release build, built when missing. Needs curl
# and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="$PWD/data/cluster-demo"
BROKER="${CARGO_TARGET_DIR:-target}/release/broker"
NODES=(1 2 3)
NATS_URLS="nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"

NATS_PIDS=()
BROKER_PIDS=()

# Stops the brokers (they tell their clients to resume later and close their views cleanly),
# then the nats-servers. Each gets SIGTERM and 30 s before SIGKILL.
stop() {
  local pid waited
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 300 ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
stop_all() {
  trap - EXIT INT TERM
  echo "cluster.sh: stopping the brokers, then the nats-servers" >&2
  stop "${BROKER_PIDS[@]}"
  stop "${NATS_PIDS[@]}"
  echo "cluster.sh: stopped; state kept in $DATA" >&2
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Waits up to 60 s until the command after the first three arguments succeeds; gives up
# early, showing the end of `log`, if process `pid` has exited.
wait_for() {
  local name="$1" pid="$2" log="$3" tries=0
  shift 3
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "cluster.sh: $name exited; the end of $log:" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
    tries=$((tries + 1))
    if [ "$tries" -ge 120 ]; then
      echo "cluster.sh: $name not ready after 60 s; see $log" >&2
      exit 1
    fi
    sleep 0.5
  done
}

# Whether the nats-server monitored on `port` names a JetStream meta leader and a leader for
# every stream it holds. /healthz alone is not enough: after a restart it answers 200 while
# stream leaders are still being elected, and a broker starting then gives up.
jetstream_ready() {
  curl -fsS --max-time 2 "http://127.0.0.1:$1/jsz?streams=true" | python3 -c '
import json, sys
jsz = json.load(sys.stdin)
streams = [s for a in jsz.get("account_details", []) for s in a.get("stream_detail", [])]
ready = jsz.get("meta_cluster", {}).get("leader") and all(
    s.get("cluster", {}).get("leader") for s in streams)
sys.exit(0 if ready else 1)'
}

mkdir -p "$DATA"
NATS_SERVER="$(scripts/nats-server.sh)"
if [ ! -x "$BROKER" ]; then
  echo "cluster.sh: building the broker (cargo build --release -p broker)" >&2
  cargo build --release -p broker
fi

# One API key for every node: a client's credentials must work on whichever node it reaches.
# Created on the first run and kept, like the broker's own development key.
if [ ! -s "$DATA/api-key" ]; then
  secret="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  echo "demo.cluster:$secret" >"$DATA/api-key"
  chmod 600 "$DATA/api-key"
fi
KEY="$(cat "$DATA/api-key")"

for n in "${NODES[@]}"; do
  routes=()
  for peer in "${NODES[@]}"; do
    [ "$peer" = "$n" ] || routes+=("\"nats-route://127.0.0.1:$((6221 + peer))\"")
  done
  cat >"$DATA/nats-$n.conf" <<EOF
server_name: n$n
listen: "127.0.0.1:$((4221 + n))"
http: "127.0.0.1:$((8221 + n))"
jetstream {
  store_dir: "$DATA/nats-$n"
  # An ACK means a quorum of the stream's replicas has written the message, not fsynced it.
  # For an fsync before every ACK (slower; see docs/operations.md), add:
  # sync_interval: always
}
cluster {
  name: cluster-demo
  listen: "127.0.0.1:$((6221 + n))"
  routes: [$(IFS=,; echo "${routes[*]}")]
}
EOF
  # setsid: in a session of its own, so Ctrl-C reaches only this script, which then stops
  # the processes in order.
  setsid "$NATS_SERVER" -c "$DATA/nats-$n.conf" >>"$DATA/nats-$n.log" 2>&1 &
  NATS_PIDS+=("$!")
done
for n in "${NODES[@]}"; do
  wait_for "nats-server n$n" "${NATS_PIDS[$((n - 1))]}" "$DATA/nats-$n.log" \
    jetstream_ready "$((8221 + n))"
done
echo "cluster.sh: 3 nats-servers ready" >&2

# One broker after the other: the first creates the streams, the others find them.
for n in "${NODES[@]}"; do
  setsid "$BROKER" --listen "127.0.0.1:$((8080 + n))" --data-dir "$DATA/broker-$n" \
    --nats "$NATS_URLS" --node-id "node-$n" --key "$KEY" \
    >>"$DATA/broker-$n.log" 2>&1 &
  BROKER_PIDS+=("$!")
  wait_for "broker node-$n" "$!" "$DATA/broker-$n.log" \
    curl -fsS --max-time 2 "http://127.0.0.1:$((8080 + n))/health"
  echo "cluster.sh: broker node-$n ready on http://127.0.0.1:$((8080 + n))" >&2
done

cat <<EOF

Cluster running: brokers on http://127.0.0.1:8081, :8082 and :8083, on 3 nats-servers.
API key (every node): $KEY

ably-js, on any node (change the port for another):
  new Ably.Realtime({ key: '$KEY', endpoint: '127.0.0.1', port: 8081, tls: false })

REST: publish on node 1, read the history on node 3:
  curl -u '$KEY' -H 'Content-Type: application/json' \\
    -d '{"name":"greeting","data":"hello"}' http://127.0.0.1:8081/channels/demo/messages
  curl -u '$KEY' 'http://127.0.0.1:8083/channels/demo/messages?direction=forwards'

NATS monitoring: http://127.0.0.1:8222/jsz (and 8223, 8224). Logs: $DATA/*.log
Stop with Ctrl-C (or SIGTERM to this script, pid $$).
EOF

# Until Ctrl-C, or until one of the processes exits on its own.
set +e
wait -n "${NATS_PIDS[@]}" "${BROKER_PIDS[@]}"
status=$?
set -e
echo "cluster.sh: a process exited (status $status); stopping the others" >&2
exit 1
