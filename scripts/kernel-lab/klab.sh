#!/usr/bin/env bash
# The kernel lab: Debian's own kernels (scripts/kernel-lab/matrix) booted under QEMU by virtme-ng with
# this machine's filesystem as a copy-on-write root, so the checkout and its .venv are seen inside.
#   klab.sh fetch SUITE             fetch and cache the suite's kernel (prints its version)
#   klab.sh kvm                     "kvm" when a KVM guest really boots here, else "tcg" (cached per boot)
#   klab.sh run SUITE RWDIR CMD...  boot SUITE, run CMD (bash -c) inside with RWDIR writable, exit with
#                                   CMD's own status (124: the guest timed out, 125: no status came back)
# Settings: BULWARK_KLAB_CACHE (default /var/cache/bulwark-klab), BULWARK_KLAB_KVM (auto|0|1),
# BULWARK_KLAB_TIMEOUT (seconds, default 3600), BULWARK_KLAB_MEMORY (default 3G), BULWARK_KLAB_CPUS (2),
# BULWARK_KLAB_SEED (kernels already fetched by hand, reused as a cache seed: /var/cache/klab).
# Needs root. Installs what it needs (qemu-system-x86, kmod, busybox-static, virtme-ng in its own venv).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${BULWARK_KLAB_CACHE:-/var/cache/bulwark-klab}
seed=${BULWARK_KLAB_SEED:-/var/cache/klab}
VNG_VERSION=1.42
export PATH=$PATH:/usr/sbin:/sbin

log() { echo "klab: $*" >&2; }

matrix_line() {  # SUITE -> "suite series append"
  awk -v s="$1" '$1 == s {print; found=1} END {exit !found}' "$here/matrix" ||
    { log "suite $1 is not in $here/matrix"; exit 2; }
}

ensure_host_tools() {
  command -v qemu-system-x86_64 >/dev/null && [ -x /usr/sbin/depmod ] && [ -x /bin/busybox ] && return
  log "installing qemu-system-x86 kmod busybox-static"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-system-x86 kmod busybox-static >/dev/null
}

ensure_vng() {
  [ -x "$cache/venv/bin/vng" ] && return
  log "installing virtme-ng $VNG_VERSION into $cache/venv"
  mkdir -p "$cache"
  rm -rf "$cache/venv"
  /usr/bin/python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q "virtme-ng==$VNG_VERSION" || { rm -rf "$cache/venv"; exit 1; }
}

kernel_dir() { echo "$cache/kernels/$1"; }

fetch() {  # SUITE: the kernel package linux-image-amd64 depends on, from that suite's own index
  local suite=$1 series dir
  read -r _ series _ < <(matrix_line "$suite")
  dir=$(kernel_dir "$suite")
  if ! ls "$dir"/boot/vmlinuz-* >/dev/null 2>&1; then
    mkdir -p "$dir"
    if ls "$seed/$suite"/boot/vmlinuz-* >/dev/null 2>&1; then
      log "seeding $suite from $seed/$suite"
      cp -a "$seed/$suite/." "$dir/"
    else
      local lists pkg opts
      lists=$(mktemp -d); chmod 755 "$lists"; mkdir -p "$lists/parts" "$lists/state/partial"
      echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
        > "$lists/sources.list"
      opts=(-o Dir::Etc::sourcelist="$lists/sources.list" -o Dir::Etc::sourceparts="$lists/parts"
            -o Dir::State::Lists="$lists/state")
      log "fetching $suite's kernel package"
      apt-get "${opts[@]}" update -q >/dev/null
      pkg=$(apt-cache "${opts[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
      [ -n "$pkg" ] || { log "no kernel package in $suite's index"; rm -rf "$lists"; exit 1; }
      (cd "$lists" && apt-get "${opts[@]}" download "$pkg" >/dev/null)
      dpkg -x "$lists/$pkg"_*.deb "$dir.tmp"
      rm -rf "$lists"
      cp -a "$dir.tmp/." "$dir/"; rm -rf "$dir.tmp"
    fi
  fi
  local kver
  kver=$(basename "$(ls "$dir"/boot/vmlinuz-* | head -1)"); kver=${kver#vmlinuz-}
  case "$kver" in "$series".*|"$series"-*) ;; *) log "$suite gave kernel $kver, not series $series"; exit 1;; esac
  # virtme-ng loads the guest's 9p/virtio/overlay modules from the host's /lib/modules/<version>
  local mods=$dir/lib/modules/$kver
  [ -d "$mods" ] || mods=$dir/usr/lib/modules/$kver   # trixie: merged /usr
  mkdir -p /lib/modules
  [ -d "/lib/modules/$kver" ] || cp -a "$mods" "/lib/modules/$kver"
  [ -f "/lib/modules/$kver/modules.dep" ] || depmod "$kver"
  echo "$kver"
}

boot() {  # SUITE ACCEL TIMEOUT RWDIR GUESTCMD: vng in the foreground, console on stdout
  local suite=$1 accel=$2 limit=$3 rw=$4 cmd=$5 append kver dir
  read -r _ _ append < <(matrix_line "$suite")
  kver=$(fetch "$suite"); dir=$(kernel_dir "$suite")
  local args=(-r "$dir/boot/vmlinuz-$kver" --memory "${BULWARK_KLAB_MEMORY:-3G}"
              --cpus "${BULWARK_KLAB_CPUS:-2}" --verbose --cwd "$(pwd)")
  [ "$accel" = tcg ] && args+=(--disable-kvm)
  [ "$append" != "-" ] && args+=(--append "$append")
  [ -n "$rw" ] && args+=(--rwdir "$rw")
  # vng exits 255 even when the command succeeded: callers read the command's status elsewhere.
  # timeout runs it in a process group of its own; a TERM to this script reaches that group (trap).
  PATH=$cache/venv/bin:$PATH timeout -k 10 "$limit" vng "${args[@]}" -e "$cmd" </dev/null &
  BOOT_PID=$!
  local rc=0
  wait "$BOOT_PID" || rc=$?
  BOOT_PID=
  return $rc
}

BOOT_PID=
stop_guest() {  # on TERM/INT/HUP: stop the guest we started (timeout passes the signal to its group)
  if [ -n "$BOOT_PID" ]; then kill -TERM "$BOOT_PID" 2>/dev/null || true; wait "$BOOT_PID" 2>/dev/null || true; fi
  exit 143
}
trap stop_guest TERM INT HUP

kvm_mode() {
  case "${BULWARK_KLAB_KVM:-auto}" in 0|no|tcg) echo tcg; return;; 1|yes|kvm) echo kvm; return;; esac
  [ -w /dev/kvm ] || { echo tcg; return; }
  local stamp boot_id
  boot_id=$(cat /proc/sys/kernel/random/boot_id)
  stamp=$cache/kvm-$boot_id
  if [ ! -f "$stamp" ]; then
    # Nested KVM can hang right after "Probing EDD": a short bounded boot decides, once per host boot.
    mkdir -p "$cache"; rm -f "$cache"/kvm-*
    local out
    out=$(boot bookworm kvm 45 "" 'echo KLAB-KVM-WORKS' 2>&1 || true)
    if grep -q '^KLAB-KVM-WORKS' <<<"$out"; then echo kvm > "$stamp"; else echo tcg > "$stamp"; fi
    log "KVM guest probe: $(cat "$stamp")"
  fi
  cat "$stamp"
}

run() {  # SUITE RWDIR CMD...
  local suite=$1 rw=$2; shift 2
  [ -d "$rw" ] || { log "results dir $rw does not exist"; exit 2; }
  rw=$(cd "$rw" && pwd)
  local accel status
  accel=$(kvm_mode)
  rm -f "$rw/.klab-status"
  log "booting $suite ($accel)"
  # The command travels in a file, not on the kernel command line: vng passes its command there, and
  # a line longer than COMMAND_LINE_SIZE (2048 on x86) makes 6.1 panic at boot (fortify_panic).
  local guest cmdfile=$rw/.klab-cmd.sh
  printf '%s\n' "$*" > "$cmdfile"
  guest="bash $(printf %q "$here/guest.sh") $(printf %q "$rw") bash $(printf %q "$cmdfile")"
  boot "$suite" "$accel" "${BULWARK_KLAB_TIMEOUT:-3600}" "$rw" "$guest" || status=$?
  if [ "${status:-0}" = 124 ] || [ "${status:-0}" = 137 ]; then log "$suite guest timed out"; exit 124; fi
  [ -f "$rw/.klab-status" ] || { log "$suite guest returned no status (vng: ${status:-0})"; exit 125; }
  exit "$(cat "$rw/.klab-status")"
}

main() {
  [ "$(id -u)" = 0 ] || { log "needs root"; exit 2; }
  local cmd=${1:-}; shift || true
  case "$cmd" in
    fetch) ensure_host_tools; fetch "${1:?suite}";;
    kvm) ensure_host_tools; ensure_vng; kvm_mode;;
    run) ensure_host_tools; ensure_vng; run "$@";;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2;;
  esac
}
main "$@"
