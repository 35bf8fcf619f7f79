#!/usr/bin/env bash
# Builds the tcpwatch image on a host without an image registry:
#   scripts/image.sh [BINARY] [TAG] [FLAVOUR]
# FLAVOUR `agent` (the default) is the image deploy/Dockerfile describes;
# `systemd` is tests/systemd/Dockerfile, a Debian booting systemd with the
# agent installed as deploy/systemd/tcpwatch.service (tests/e2e/systemd.rs);
# `peer` is tests/docker/peer.Dockerfile, curl and python3 for the tracepoint
# tests (no binary: give `-` as BINARY).
# - starts dockerd if no engine answers (Debian's docker.io);
# - creates debian:bookworm-slim with debootstrap when it is not present;
# - runs the same `docker build -f deploy/Dockerfile` a registry user runs,
#   on a context holding only the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/release/tcpwatch}
tag=${2:-tcpwatch:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
flavour=${3:-agent}
base=debian:bookworm-slim
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "image: $*" >&2; }

start_engine() {
  docker info >/dev/null 2>&1 && return
  command -v dockerd >/dev/null || { log "no docker engine and no dockerd (apt-get install docker.io)"; exit 1; }
  log "starting dockerd"
  nohup dockerd >/var/log/tcpwatch-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 0.5; done
  log "dockerd did not start; see /var/log/tcpwatch-dockerd.log"
  exit 1
}

make_base() {
  docker image inspect "$base" >/dev/null 2>&1 && return
  command -v debootstrap >/dev/null || { log "$base missing and no debootstrap (apt-get install debootstrap)"; exit 1; }
  log "creating $base with debootstrap (minbase)"
  local root
  root=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$base" >/dev/null
  rm -rf "$root"
}

# The build context holds only what the Dockerfile copies, at its
# repository path.
context_files() {
  case "$flavour" in
    agent) ;;
    systemd) echo deploy/systemd/tcpwatch.service tests/systemd/tcpwatch.toml tests/systemd/boot tests/peer.py ;;
  esac
}

case "$flavour" in
  agent) dockerfile=deploy/Dockerfile ;;
  systemd) dockerfile=tests/systemd/Dockerfile ;;
  peer) dockerfile=tests/docker/peer.Dockerfile ;;
  *) log "unknown flavour '$flavour' (agent, systemd or peer)"; exit 2 ;;
esac
if [ "$flavour" = peer ]; then
  binary=-
elif [ ! -x "$binary" ]; then
  log "$binary not found: run 'cargo build --release' first"
  exit 1
fi
start_engine
make_base
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
[ "$binary" = - ] || install -D -m 0755 "$binary" "$context/target/release/tcpwatch"
for file in $(context_files); do
  install -D -m "$(stat -c %a "$file")" "$file" "$context/$file"
done
docker build -q -f "$dockerfile" -t "$tag" "$context" >/dev/null
log "built $tag"
echo "$tag"
