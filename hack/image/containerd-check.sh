#!/usr/bin/env bash
# Proves the archives in bin/images/ are images containerd takes, without
# touching the cluster: starts a private containerd (its own config, root,
# state and socket under bin/images/.containerd/, not the system service and
# not the cluster's socket), loads every built image into it with
# `images.sh load` (the same code path as make images-load), lists them, runs
# one short command in each (`mailfleet version`, `nats-server --version`, ...)
# with runc, and stops it.
#
# Usage: hack/image/containerd-check.sh [--keep]
#   --keep leaves the private containerd's content in place for a second run
#   (its load then skips what is already there).
# Needs Debian's containerd and runc (installed when missing). Exits non-zero
# when an import or the listing fails; a failed `ctr run` is reported (some
# VMs refuse runc's sandbox) and fails the check too.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
keep=
for arg in "$@"; do
  case $arg in
    --keep) keep=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "hack/image/containerd-check: unknown argument $arg" >&2; exit 2 ;;
  esac
done
log() { echo "hack/image/containerd-check: $*" >&2; }

if ! command -v containerd >/dev/null || ! command -v runc >/dev/null; then
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then apt-get update -qq; fi
  # policy-rc.d keeps the package from starting Debian's containerd service.
  prc=/usr/sbin/policy-rc.d created=
  if [ ! -e $prc ]; then printf '#!/bin/sh\nexit 101\n' >$prc && chmod +x $prc && created=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd runc >&2
  [ -z "$created" ] || rm -f $prc
fi

dir=$root/bin/images/.containerd
sock=$dir/containerd.sock
snapshotter=${CONTAINERD_SNAPSHOTTER:-overlayfs}
[ -n "$keep" ] || rm -rf "$dir"
mkdir -p "$dir"
# No CRI plugin: this containerd only stores and runs what ctr asks for.
cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF

containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
pid=$!
stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 50); do
  [ -S "$sock" ] && ctr --address "$sock" version >/dev/null 2>&1 && break
  sleep 0.2
done
ctr --address "$sock" version >/dev/null || { cat "$dir/containerd.log" >&2; exit 1; }
log "private containerd $(containerd --version | awk '{print $3}') on $sock (pid $pid)"

CONTAINERD_ADDRESS=$sock CONTAINERD_SNAPSHOTTER=$snapshotter hack/image/images.sh load
ctr -n k8s.io --address "$sock" images ls

# One short command per image, from its own files as its own user: the
# binary starts, redis's libraries and shell resolve, coredns's file
# capability lets it exec. pause is left out: it only waits for a signal.
declare -A smoke=(
  [mailfleet]="/usr/local/bin/mailfleet version"
  [nats]="nats-server --version"
  [redis]="sh -c 'redis-server --version && id'"
  [smtpsink]="/usr/local/bin/smtpsink -h"
  [coredns]="/coredns -version"
)
failed=0
for name in mailfleet nats redis smtpsink coredns; do
  [ -s "bin/images/$name.ref" ] || continue
  ref=$(cut -d@ -f1 "bin/images/$name.ref")
  eval "cmd=(${smoke[$name]})"
  log "ctr run $ref ${smoke[$name]}"
  if out=$(ctr -n k8s.io --address "$sock" run --rm --snapshotter "$snapshotter" \
    --runc-root "$dir/runc" "$ref" "image-check-$name-$$" "${cmd[@]}" 2>&1); then
    echo "$out" | sed "s/^/  $name: /"
  else
    log "ctr run $ref failed:"
    echo "$out" >&2
    failed=1
  fi
done
exit $failed
