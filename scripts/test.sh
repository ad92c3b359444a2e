#!/usr/bin/env bash
# Runs every test from a clean checkout: formatting and lints, the Rust unit and integration
# tests, then the ably-js conformance suite against the release broker binary. Installs what
# the suites need (the pinned nats-server into target/tools, npm packages from the lock files
# into tests/ably-js/node_modules and examples/react-chat/node_modules) on the way, and leaves
# the tracked files as it found them.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "nats-server for the cluster tests"
# Assigned apart from the export, so that a failed install stops the script (set -e).
NATS_SERVER="$(scripts/nats-server.sh)"
export NATS_SERVER

step "Rust tests (unit and integration)"
cargo test --workspace --quiet

step "release build of the broker (used by the ably-js suite)"
cargo build --release -p broker --quiet

step "release build of the Rust SDK examples (used by the ably-js suite)"
cargo build --release -p client-sdk --example interop --example terminal_chat --quiet

if [ -f tests/ably-js/package.json ]; then
  step "npm packages for the ably-js suite"
  if [ -f tests/ably-js/package-lock.json ]; then
    npm ci --prefix tests/ably-js --no-audit --no-fund --loglevel=error
  else
    npm install --prefix tests/ably-js --no-audit --no-fund --loglevel=error
  fi
  step "ably-js conformance suite"
  BROKER_BIN="$PWD/target/release/broker" \
    RUST_INTEROP_BIN="$PWD/target/release/examples/interop" \
    TERMINAL_CHAT_BIN="$PWD/target/release/examples/terminal_chat" \
    npm test --prefix tests/ably-js
fi

if [ -f examples/react-chat/package.json ]; then
  step "Chromium for the react-chat browser test"
  if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  fi
  step "build of the react-chat example"
  # npm ci installs exactly the lock file and never rewrites it, so the run leaves the checkout
  # as it found it. npm ci refuses a lock file that lacks any platform's optional package (vite's
  # rollup and esbuild binaries); `npm install --package-lock-only` records every platform's
  # when a dependency changes (an install over an existing node_modules has been known to leave
  # other platforms' out, npm/cli#4828).
  npm ci --prefix examples/react-chat --no-audit --no-fund --loglevel=error
  npm run build --prefix examples/react-chat
  step "react-chat browser end-to-end test"
  BROKER_BIN="$PWD/target/release/broker" node --test examples/react-chat/e2e/
fi
