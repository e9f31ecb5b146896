#!/usr/bin/env bash
# Brings up a real single-node Kubernetes cluster on this machine, so the e2e
# tests can run the Helm chart as real pods without Docker, a registry or any
# download: every binary is built from source by hack/cluster/build.sh and
# every image by hack/image. One node (containerd + kubelet + kube-proxy) and
# its control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler) run as plain processes; CoreDNS and pods run in containers.
#
# Usage: hack/cluster/up.sh        (make cluster-up; must run as root)
#   Afterwards: source bin/cluster/env  (KUBECONFIG, CONTAINERD_ADDRESS, NODE_IP)
#   Stop and clean up with hack/cluster/down.sh (make cluster-down).
#
# Contained: pods and services live on bridges of the cluster's own, pods get
# routes to those only, the forwarding of anything out of the machine's
# external interfaces is dropped, CoreDNS answers cluster names only and
# containerd's registries all point at a closed local port. See README.md.
#
# Idempotent: a process already running with the same binary, flags and
# configuration is left alone, so a second run only checks (a few seconds);
# one that died, or whose binary or configuration changed, is (re)started.
# Nothing supervises the processes between runs: run up.sh again to heal.
# It prints the build time and the bring-up time (start to node Ready and
# CoreDNS running): about 15 s warm on 2 cores.
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  "") ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (it runs a kubelet and containerd)"

t_start=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# --- build (cached; seconds when nothing changed) ---------------------------
"$here/build.sh"
t_build=$(elapsed "$t_start")
t_up=$(date +%s.%N)

mkdir -p "$RUN" "$LOGS" "$STATE" "$CONF" "$CTRD_ROOT"
"$here/pki.sh"

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local what=$1 secs=$2 deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out after ${secs}s waiting for $what; logs are in $LOGS"
      return 1
    fi
    sleep 0.2
  done
}

# start NAME COMMAND...: runs COMMAND as a daemon in its own session (so it
# outlives this script and make), logging to $LOGS/NAME.log. One that runs
# with the same binary, command line and configuration files is left alone;
# one where any of those changed since it started is restarted.
start() {
  local name=$1 fd arg sig i pid
  shift
  sig=$({
    stat -c '%s %Y' "$(command -v "$1")"
    for arg in "$@"; do
      echo "$arg"
      case $arg in "$CONF"/* | "$PKI"/*) [ ! -f "$arg" ] || sha256sum <"$arg" ;; esac
    done
  } | sha256sum | cut -d' ' -f1)
  if pid_alive "$name"; then
    [ "$(cat "$RUN/$name.sig" 2>/dev/null)" != "$sig" ] || return 0
    pid=$(cat "$RUN/$name.pid")
    log "restarting $name: its binary, command line or configuration changed"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  else
    log "starting $name"
  fi
  # Logs append across runs; one generation is kept past 50 MiB.
  if [ "$(stat -c %s "$LOGS/$name.log" 2>/dev/null || echo 0)" -gt 52428800 ]; then
    mv -f "$LOGS/$name.log" "$LOGS/$name.log.1"
  fi
  (
    # No inherited descriptor may keep this script's caller waiting.
    for fd in "/proc/$BASHPID/fd/"*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] && eval "exec $fd>&-"
    done
    exec setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1
  ) &
  echo $! >"$RUN/$name.pid"
  echo "$sig" >"$RUN/$name.sig"
}

# --- host: record what is changed, so down.sh can restore it ---------------
# save_once FILE VALUE: the first up since boot (or since down.sh) records the
# machine's original value; later runs must not overwrite it.
save_once() { [ -f "$RUN/$1" ] || echo "$2" >"$RUN/$1"; }
for key in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables; do
  save_once "sysctl.$key" "$(sysctl -n "$key" 2>/dev/null || echo absent)"
done
for dir in /var/lib/cni /run/netns /var/run/netns /run/containerd; do
  save_once "existed.${dir//\//_}" "$([ -e "$dir" ] && echo yes || echo no)"
done

# Bridged pod traffic must pass iptables for kube-proxy's service rules, and
# service traffic between pods is routed.
[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null ||
  die "net.bridge.bridge-nf-call-iptables is missing (no br_netfilter)"
sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1

# --- network: two bridges of our own and routes to them only ---------------
ensure_bridge() { # NAME ADDRESS/PREFIX
  ip link show "$1" >/dev/null 2>&1 || ip link add "$1" type bridge
  ip addr show dev "$1" | grep -q " ${2%/*}/" || ip addr add "$2" dev "$1"
  ip link set "$1" up
}
ensure_bridge "$NODE_BRIDGE" "$NODE_IP/32"
ensure_bridge "$POD_BRIDGE" "$POD_GW/${POD_CIDR#*/}"
# Service addresses are virtual (kube-proxy rewrites them); should a packet to
# one escape the rewrite it goes to the pod bridge, never to a default route.
ip route replace "$SERVICE_CIDR" dev "$POD_BRIDGE" src "$POD_GW"

# Containment: nothing forwarded may leave through an external interface, and
# pod traffic may only be forwarded back to pods. In filter FORWARD (first,
# ahead of kube-proxy's rules) and in mangle FORWARD, which kube-proxy does
# not touch, so no later rule order can undo it.
mapfile -t ext < <(external_ifaces)
contain_rules() { # TABLE
  local t=$1 i
  iptables -t "$t" -N "$CONTAIN_CHAIN" 2>/dev/null || iptables -t "$t" -F "$CONTAIN_CHAIN"
  for i in "${ext[@]}"; do
    iptables -t "$t" -A "$CONTAIN_CHAIN" -o "$i" -j DROP -m comment --comment "mailfleet cluster: nothing leaves via $i"
  done
  # Replies to connections made to pods from the host side (a test's client
  # network namespace reaching a node port) may go back; what they could
  # leave through externally was dropped above.
  iptables -t "$t" -A "$CONTAIN_CHAIN" -i "$POD_BRIDGE" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN \
    -m comment --comment "mailfleet cluster: replies to connections made to pods"
  iptables -t "$t" -A "$CONTAIN_CHAIN" -i "$POD_BRIDGE" ! -o "$POD_BRIDGE" -j DROP \
    -m comment --comment "mailfleet cluster: pods reach pods only"
  iptables -t "$t" -A "$CONTAIN_CHAIN" -s "$POD_CIDR" ! -o "$POD_BRIDGE" -j DROP \
    -m comment --comment "mailfleet cluster: pods reach pods only"
  contain_first "$t"
}
# contain_first TABLE: the jump to the containment chain is FORWARD's first
# rule. kube-proxy inserts its own jumps at the top when they are missing (on
# its first sync), so this runs again once kube-proxy has synced; kube-proxy
# only checks that its rules exist, so the order holds from then on.
contain_first() {
  local t=$1
  if [ "$(iptables -t "$t" -S FORWARD 2>/dev/null | sed -n 2p)" != "-A FORWARD -j $CONTAIN_CHAIN" ]; then
    while iptables -t "$t" -D FORWARD -j "$CONTAIN_CHAIN" 2>/dev/null; do :; done
    iptables -t "$t" -I FORWARD 1 -j "$CONTAIN_CHAIN"
  fi
}
contain_rules filter
contain_rules mangle

# --- configuration files ----------------------------------------------------
# put FILE: writes stdin to FILE only when that changes it. A running
# kube-proxy exits when its configuration file is written at all, so a second
# up.sh must leave unchanged files untouched.
put() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else chmod 0644 "$tmp" && mv -f "$tmp" "$1"; fi
}
# kubelet hands this to pods with dnsPolicy Default (CoreDNS among them): no
# nameserver, so nothing resolves names through the machine's resolver.
echo "# mailfleet cluster: no upstream nameserver on purpose (hack/cluster/README.md)" | put "$CONF/resolv.conf"

# crictl (down.sh, and anyone debugging: bin/cluster/bin/crictl --config ...).
put "$CONF/crictl.yaml" <<EOF
runtime-endpoint: unix://$CONTAINERD_ADDRESS
image-endpoint: unix://$CONTAINERD_ADDRESS
timeout: 10
EOF

# containerd: registries all point at a port that is closed, so an image that
# was not imported fails to pull at once, without any traffic leaving.
mkdir -p "$CONF/certs.d/_default" "$CONF/cni" "$RUN/containerd"
put "$CONF/certs.d/_default/hosts.toml" <<'EOF'
# Every registry resolves here: a closed local port. Images are imported with
# `ctr images import`, never pulled.
server = "https://127.0.0.1:1"
[host."https://127.0.0.1:1"]
  capabilities = ["pull", "resolve"]
EOF
# The images' own registry name too, in case a containerd ignores _default.
mkdir -p "$CONF/certs.d/mailfleet.test"
put "$CONF/certs.d/mailfleet.test/hosts.toml" <"$CONF/certs.d/_default/hosts.toml"

put "$CONF/containerd.toml" <<EOF
# containerd for the mailfleet test cluster (hack/cluster/up.sh); not the
# system's containerd: its own socket, root and state.
version = 2
root = "$CTRD_ROOT/root"
state = "$RUN/containerd/state"
# Plugins that need kernel features or disks this machine lacks only log noise.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CONTAINERD_ADDRESS"
[ttrpc]
  address = "$RUN/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD_ROOT/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The VM withholds CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below
  # its own, and without this every sandbox fails to start.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$RUN/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CONF/cni"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CONF/certs.d"
EOF

# CNI: a bridge with host-local addresses. Pods get routes to the service
# range and the node's network only, no default route, and no masquerading: nothing
# outside this machine is reachable from a pod even in principle.
put "$CONF/cni/10-mailfleet.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "mailfleet",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN/cni-ipam",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$POD_GW" }]],
        "routes": [
          { "dst": "$SERVICE_CIDR", "gw": "$POD_GW" },
          { "dst": "$NODE_NET", "gw": "$POD_GW" }
        ]
      }
    }
  ]
}
EOF

put "$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
containerRuntimeEndpoint: unix://$CONTAINERD_ADDRESS
# This machine has cgroup v1 and no systemd as PID 1.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
clusterDNS: [$DNS_SVC_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $CONF/resolv.conf
podLogsDir: $STATE/pod-logs
# Imported images cannot be pulled again, so image GC must never remove them;
# and the disk may be tight, so eviction only starts when it is nearly full.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
serializeImagePulls: false
maxPods: 110
EOF

put "$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $CONF/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts on the node's own address only, never the external interfaces.
nodePortAddresses: ["$NODE_IP/32"]
iptables:
  # Leave the machine's sysctls alone (route_localnet, conntrack tables):
  # down.sh cannot know what they should go back to.
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF

# --- processes --------------------------------------------------------------
start containerd containerd --config "$CONF/containerd.toml"
wait_for containerd 30 ctr version

start etcd "$K8S_BIN/etcd" --name "$NODE_NAME" --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" \
  --listen-metrics-urls "" --unsafe-no-fsync --log-level warn
etcd_healthy() { curl -fsS --max-time 1 http://127.0.0.1:2379/health | grep -q '"health":"true"'; }

# Images: pause and CoreDNS must be in containerd before the first pod. They
# are assembled and imported by hack/image/images.sh (make images-load does
# the same for every image); skipped when containerd already has both.
grep -q "image: $COREDNS_IMAGE\$" "$here/manifests/coredns.yaml" ||
  die "manifests/coredns.yaml does not use $COREDNS_IMAGE (the version in hack/cluster/coredns/go.mod)"
have_images() {
  local have
  have=$(ctr images ls -q)
  grep -qx "$PAUSE_IMAGE" <<<"$have" && grep -qx "$COREDNS_IMAGE" <<<"$have"
}
if ! have_images; then
  "$root/hack/image/images.sh" build pause coredns >&2
  CONTAINERD_ADDRESS=$CONTAINERD_ADDRESS "$root/hack/image/images.sh" load pause coredns
  have_images || die "containerd lacks $PAUSE_IMAGE or $COREDNS_IMAGE after hack/image/images.sh load"
fi

wait_for etcd 30 etcd_healthy
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port 6443 \
  --etcd-servers http://127.0.0.1:2379 \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --allow-privileged=true \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$PKI/ca.crt" \
  --kubelet-preferred-address-types InternalIP \
  --profiling=false
wait_for kube-apiserver 60 kubectl get --raw /readyz

# No --authentication-/--authorization-kubeconfig for these two: delegated
# authentication wants the front-proxy CA (requestheader), which this cluster
# does not have, and logs an error every few seconds without it. Their secure
# ports then serve /healthz and /readyz only, which is all that is needed.
start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig "$CONF/kube-controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false \
  --profiling=false

start kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig "$CONF/kube-scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --profiling=false

start kubelet "$BIN/kubelet" --config "$CONF/kubelet.yaml" \
  --kubeconfig "$CONF/kubelet.kubeconfig" --root-dir "$STATE/kubelet" \
  --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"

start kube-proxy "$BIN/kube-proxy" --config "$CONF/kube-proxy.yaml"
kube_proxy_synced() { iptables -S FORWARD 2>/dev/null | grep -q -- '-j KUBE-FORWARD'; }
wait_for "kube-proxy's first sync" 60 kube_proxy_synced
contain_first filter

# Cluster objects: RBAC, CoreDNS, the default StorageClass (the other files in
# manifests/ are applied by whoever needs them). `apply` changes nothing when
# nothing changed.
kubectl apply -f "$here/manifests/rbac.yaml" -f "$here/manifests/storage.yaml" \
  -f "$here/manifests/coredns.yaml" >"$LOGS/apply.log" 2>&1 ||
  { cat "$LOGS/apply.log" >&2; die "kubectl apply failed"; }

start provisioner "$BIN/provisioner" -kubeconfig "$CONF/provisioner.kubeconfig" -dir "$STATE/volumes"

put "$CL/env" <<EOF
# Source this file to use the mailfleet test cluster (hack/cluster/up.sh).
export KUBECONFIG=$CL/kubeconfig
export CONTAINERD_ADDRESS=$CONTAINERD_ADDRESS
export CONTAINERD_NAMESPACE=k8s.io
export NODE_IP=$NODE_IP
export NODE_NAME=$NODE_NAME
EOF

node_ready() {
  [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_for "node $NODE_NAME to be Ready" 120 node_ready
t_ready=$(elapsed "$t_up")
coredns_ready() {
  [ "$(kubectl -n kube-system get deployment coredns -o jsonpath='{.status.readyReplicas}')" = 1 ]
}
wait_for "CoreDNS" 120 coredns_ready
t_dns=$(elapsed "$t_up")

log "cluster is up: build ${t_build}s, then node Ready after ${t_ready}s, CoreDNS running after ${t_dns}s"
log "use it with: source $CL/env   (kubeconfig $CL/kubeconfig)"
