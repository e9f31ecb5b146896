#!/usr/bin/env bash
# Stops the single-node cluster hack/cluster/up.sh started and puts the machine
# back as it was: every process up.sh started, every pod and container, the
# bridges and routes, the iptables rules (its own and kube-proxy's/kubelet's),
# the mounts, the cgroups the kubelet made and the sysctls it changed. So a
# test run leaves nothing behind that could route, listen or hold disk.
#
# Usage: hack/cluster/down.sh [--purge]   (make cluster-down; must run as root)
#   Binaries (bin/cluster/bin), certificates and imported images stay cached,
#   so the next up.sh is fast. --purge also removes the imported images
#   (containerd's root), certificates, configuration and logs; only the
#   binaries stay.
#
# Idempotent: parts already gone are skipped; running it twice is harmless.
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

purge=
case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  --purge) purge=1 ;;
  "") ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root"

# stop NAME...: SIGTERM to each process up.sh recorded under these names, all
# at once (they stop independently), then SIGKILL to any still there after
# 20 s.
stop() {
  local name pid i pids=()
  for name in "$@"; do
    [ -f "$RUN/$name.pid" ] || continue
    pid=$(cat "$RUN/$name.pid")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      log "stopping $name ($pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$RUN/$name.pid" "$RUN/$name.sig"
  done
  for ((i = 0; i < 100; i++)); do
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && break; pid=; done
    [ -n "${pid:-}" ] || return 0
    sleep 0.2
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "process $pid did not stop in 20s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  sleep 0.5
}

# 1. Nothing may start new pods, and the kubelet must not restart the ones
#    removed below.
stop provisioner kube-scheduler kube-controller-manager kube-proxy kubelet

# 2. Every pod sandbox and container, through CRI while containerd runs: this
#    also tears down their network namespaces and CNI addresses.
if pid_alive containerd && [ -S "$CONTAINERD_ADDRESS" ]; then
  for ((i = 0; i < 5; i++)); do
    [ -n "$(crictl pods -q 2>/dev/null)" ] || break
    log "removing pods"
    crictl rmp --force --all >>"$LOGS/down.log" 2>&1 || sleep 1
  done
  [ -z "$(crictl pods -q 2>/dev/null)" ] || log "warning: pods remain: $(crictl pods -q | tr '\n' ' ')"
  # Whatever ran outside CRI in the namespace (ctr run, tests).
  for id in $(ctr tasks ls -q 2>/dev/null); do
    ctr tasks kill -s KILL "$id" >/dev/null 2>&1 || true
    ctr tasks delete -f "$id" >/dev/null 2>&1 || true
  done
  for id in $(ctr containers ls -q 2>/dev/null); do
    ctr containers delete "$id" >/dev/null 2>&1 || true
  done
fi

# 3. The control plane and containerd.
stop kube-apiserver etcd
stop containerd
# Shims outlive containerd; any left (a container that would not die) belong
# to our containerd only if they were started with its socket.
for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_ADDRESS" || true); do
  log "killing leftover shim $pid"
  kill -KILL "$pid" 2>/dev/null || true
done

# 4. iptables: kube-proxy's rules (its own cleanup), then any KUBE-* chain the
#    kubelet or kube-proxy left and the containment chain.
#    Only after an up.sh (its run directory exists): another cluster's
#    KUBE-* chains are not ours to remove.
if [ -d "$RUN" ] && [ -x "$BIN/kube-proxy" ] && iptables -t nat -S 2>/dev/null | grep -q -- '-N KUBE-'; then
  "$BIN/kube-proxy" --cleanup >>"$LOGS/kube-proxy-cleanup.log" 2>&1 || true
fi
# drop_chains CMD: removes, from each table, the rules that jump to our
# chains and then the chains themselves.
drop_chains() {
  local cmd=$1 table chain rule
  command -v "$cmd" >/dev/null || return 0
  for table in filter nat mangle raw; do
    "$cmd" -t "$table" -S >/dev/null 2>&1 || continue
    # (stderr of -S only ever warns that legacy tables exist as well.)
    # Rules (in any chain) that jump to one of ours.
    while read -r rule; do
      eval "$cmd -t $table ${rule/-A /-D }" 2>/dev/null || true
    done < <("$cmd" -t "$table" -S 2>/dev/null | grep -E -- "-j (KUBE-[A-Z0-9-]+|$CONTAIN_CHAIN)( |$)" | grep -vE -- '^-A (KUBE-|'"$CONTAIN_CHAIN"')')
    for chain in $("$cmd" -t "$table" -S 2>/dev/null | sed -n "s/^-N \(KUBE-[^ ]*\|$CONTAIN_CHAIN\)$/\1/p"); do
      "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $("$cmd" -t "$table" -S 2>/dev/null | sed -n "s/^-N \(KUBE-[^ ]*\|$CONTAIN_CHAIN\)$/\1/p"); do
      "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}
if [ -d "$RUN" ]; then
  drop_chains iptables
  drop_chains ip6tables
fi

# 5. Mounts under the cluster's directories (kubelet volumes, containerd's
#    rootfs and shm mounts) and the pods' network namespaces, deepest first.
unmount_under() {
  local dir
  for dir in "$@"; do
    findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0 "/", d) == 1' | sort -r |
      while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
}
unmount_under "$STATE" "$CTRD_ROOT" "$RUN"
# CRI normally removes these with the pods; leftovers are unmounted here. If
# /run/netns did not exist before up.sh and has since become a mount point of
# its own (`ip netns add` bind-mounts it onto itself, hiding the mounts below
# from their paths), that mount goes too, or they cannot be reached.
netns_dir=$(readlink -f /run/netns 2>/dev/null || echo /run/netns)
if [ "$(cat "$RUN/existed._run_netns" 2>/dev/null)" = no ] && mountpoint -q "$netns_dir"; then
  unmount_under "$netns_dir"
  umount "$netns_dir" 2>/dev/null || umount -l "$netns_dir" 2>/dev/null || true
fi
for ns in "$netns_dir"/cni-*; do
  [ -e "$ns" ] || continue
  umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true
  rm -f "$ns" 2>/dev/null || log "warning: cannot remove $ns"
done

# 6. Network interfaces (their routes go with them); veths died with the pods.
for link in "$POD_BRIDGE" "$NODE_BRIDGE"; do
  if ip link show "$link" >/dev/null 2>&1; then
    log "removing $link"
    ip link delete "$link"
  fi
done
for link in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{ print $2 }' | sed 's/@.*//'); do
  if ip -d link show "$link" 2>/dev/null | grep -q "master $POD_BRIDGE"; then ip link delete "$link" || true; fi
done

# Connection tracking entries of pod, service and node addresses would only
# time out; they go now.
if command -v conntrack >/dev/null; then
  for cidr in "$POD_CIDR" "$SERVICE_CIDR" "$NODE_NET"; do
    conntrack -D -s "$cidr" >/dev/null 2>&1 || true
    conntrack -D -d "$cidr" >/dev/null 2>&1 || true
  done
fi

# 7. cgroups the kubelet made (cgroupfs driver: /kubepods in each hierarchy).
for hier in /sys/fs/cgroup/*/; do
  [ -d "$hier/kubepods" ] || continue
  find "$hier/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  [ ! -d "$hier/kubepods" ] || log "warning: $hier/kubepods remains"
done

# 8. sysctls and directories, back to what up.sh found.
for f in "$RUN"/sysctl.*; do
  [ -f "$f" ] || continue
  key=${f##*/sysctl.} val=$(cat "$f")
  [ "$val" = absent ] || sysctl -qw "$key=$val" || true
done
for f in "$RUN"/existed.*; do
  [ -f "$f" ] || continue
  [ "$(cat "$f")" = no ] || continue
  dir=${f##*/existed.}
  dir=${dir//_//}
  case $dir in
    /var/lib/cni) rm -rf "$dir/results" "$dir/networks/mailfleet"; rmdir "$dir"/* "$dir" 2>/dev/null || true ;;
    *) rmdir "$dir"/* "$dir" 2>/dev/null || true ;;
  esac
done
# libcni's cache of our network's results, should /var/lib/cni have existed.
rm -f /var/lib/cni/results/mailfleet-* 2>/dev/null || true

# 9. Cluster state (etcd, kubelet root, volumes); mounts must be gone first.
if findmnt -rn -o TARGET | grep -q "^$STATE/\|^$RUN/"; then
  die "mounts remain under $STATE or $RUN; not removing them"
fi
rm -rf --one-file-system "$STATE" "$RUN"
if [ -n "$purge" ]; then
  unmount_under "$CTRD_ROOT"
  rm -rf --one-file-system "$CTRD_ROOT" "$PKI" "$CONF" "$LOGS" "$CL/kubeconfig" "$CL/env"
fi
rm -f "$CL/env"
log "cluster is down"
