#!/usr/bin/env bash
# A private Docker engine for the tests, beside anything else on the machine.
#   docker-engine.sh start DIR   install docker.io if needed, start dockerd on DIR/docker.sock,
#                                make sure the base image h2ostack/base:bookworm exists;
#                                the last line printed is `export DOCKER_HOST=...`
#   docker-engine.sh stop DIR    stop that dockerd (by its pidfile, never by name) and remove its data
#   (with H2OSTACK_ENGINE_BRIDGE=10.x.y.1/24: a bridge of its own, for a second engine beside the first)
#   docker-engine.sh halt DIR    stop that dockerd but keep its data: `start DIR` brings the same
#                                engine back (its images and containers), as a daemon restart does
set -euo pipefail
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|halt DIR" >&2; exit 2; }
CACHE=${H2OSTACK_CACHE:-$HOME/.cache/h2ostack}
BASE_IMAGE=h2ostack/base:bookworm
log() { echo "docker-engine: $*" >&2; }

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q "$@" >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q "$@" >/dev/null
  fi
}

debian_mirror() {
  # the mirror this machine's apt uses (one-line or deb822 sources)
  local m
  m=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | grep -v security | awk '{print $2}' | grep -i debian | head -n1 || true)
  if [ -z "$m" ]; then
    m=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
        | grep -v security | head -n1 || true)
  fi
  [ -n "$m" ] || { log "no Debian mirror is configured for apt (/etc/apt/sources.list*): cannot build the base image"; return 1; }
  echo "$m"
}

start() {
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  command -v dockerd >/dev/null || { log "installing docker.io"; apt_install docker.io; }
  command -v debootstrap >/dev/null || { log "installing debootstrap"; apt_install debootstrap; }
  local sock="$dir/docker.sock"
  if [ -f "$dir/docker.pid" ] && kill -0 "$(cat "$dir/docker.pid")" 2>/dev/null; then
    log "already running ($(cat "$dir/docker.pid"))"
  else
    log "starting dockerd in $dir"
    # own data, exec root and socket: nothing shared with another engine
    local net=()
    if [ -n "${H2OSTACK_ENGINE_BRIDGE:-}" ]; then
      # a second engine beside the first: a bridge of its own (H2OSTACK_ENGINE_BRIDGE=10.x.y.1/24), and
      # iptables left to the first engine; published ports then go through docker-proxy
      local br
      br="h2o$(echo -n "$dir" | sha256sum | cut -c1-10)"
      ip link show "$br" >/dev/null 2>&1 || { ip link add "$br" type bridge && ip addr add "$H2OSTACK_ENGINE_BRIDGE" dev "$br"; }
      ip link set "$br" up
      echo "$br" >"$dir/bridge"
      net=(--bridge "$br" --iptables=false --ip-masq=false)
    fi
    dockerd --storage-driver=vfs --data-root "$dir/data" --exec-root "$dir/exec" -H "unix://$sock" \
      --pidfile "$dir/docker.pid" "${net[@]}" >"$dir/dockerd.log" 2>&1 &
    for _ in $(seq 1 120); do
      docker -H "unix://$sock" info >/dev/null 2>&1 && break
      sleep 0.5
    done
    docker -H "unix://$sock" info >/dev/null 2>&1 || { log "dockerd did not come up:"; tail -n 30 "$dir/dockerd.log" >&2; exit 1; }
  fi
  if ! docker -H "unix://$sock" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    local tarball="$CACHE/base-bookworm.tar"
    if [ ! -s "$tarball" ]; then
      local root mirror
      root=$(mktemp -d)
      mirror=$(debian_mirror) || exit 1
      log "building the base image with debootstrap ($mirror)"
      debootstrap --variant=minbase --include=python3,curl bookworm "$root" "$mirror" >"$dir/debootstrap.log" 2>&1 \
        || { tail -n 30 "$dir/debootstrap.log" >&2; exit 1; }
      mkdir -p "$CACHE"
      tar -C "$root" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
      rm -rf "$root"
    fi
    docker -H "unix://$sock" import "$tarball" "$BASE_IMAGE" >/dev/null
    log "imported $BASE_IMAGE"
  fi
  echo "export DOCKER_HOST=unix://$sock"
}

halt() {
  [ -d "$dir" ] || exit 0
  dir=$(cd "$dir" && pwd)
  local pidfile="$dir/docker.pid"
  if [ -f "$pidfile" ]; then
    local pid
    pid=$(cat "$pidfile")
    # only the dockerd that this pidfile names, and only if it runs with this data root
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--data-root $dir/data"; then
      kill -TERM "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    fi
  fi
  log "dockerd halted"
}

stop() {
  [ -d "$dir" ] || exit 0
  halt
  # vfs layers and the exec root can hold mounts: release them before removal
  { grep -o " $dir/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$dir/exec" "$dir/data" 2>/dev/null || true
  if [ -f "$dir/bridge" ]; then ip link del "$(cat "$dir/bridge")" 2>/dev/null || true; rm -f "$dir/bridge"; fi
  log "stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  halt) halt ;;
  *) echo "usage: $0 start|stop|halt DIR" >&2; exit 2 ;;
esac
