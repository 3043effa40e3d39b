#!/usr/bin/env bash
# Install the Debian packages Bulwark needs (bcc for Debian's python3, bpftool, venv, PostgreSQL 15 for
# the PostgreSQL tests, apparmor_parser to compile profiles, the Docker engine, busybox for local images,
# QEMU and kmod for the kernel lab's guests: scripts/kernel-lab), and mount the kernel filesystems the
# monitor reads. Idempotent; needs root.
set -euo pipefail
PKGS="python3-bpfcc bpftool python3-venv python3-pip util-linux postgresql-15 apparmor docker.io busybox-static docker-compose debootstrap qemu-system-x86 kmod"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing Debian packages:$missing"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || true
mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security || true
