# Shared settings and helpers of hack/cluster/{up,down}.sh, sourced, never
# run. Everything the cluster creates on the machine is named here, so down.sh
# removes exactly what up.sh made.
# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$root/hack/cluster

# Built and generated files: binaries, certificates, configs, images, logs and
# the state of the running cluster. All under bin/ (git-ignored).
CL=$root/bin/cluster
BIN=$CL/bin
K8S_BIN=$root/bin/k8s # kube-apiserver, etcd, kubectl from hack/build-envtest.sh
PKI=$CL/pki
CONF=$CL/conf
LOGS=$CL/logs
STATE=$CL/state # etcd data, kubelet root, volumes; removed by down.sh
# containerd's content store and snapshots live outside STATE so imported
# images survive down.sh/up.sh (they cannot be pulled again: there is no
# registry). down.sh --purge removes them too.
CTRD_ROOT=$CL/containerd
# Runtime files: sockets, pid files, what up.sh changed (down.sh removes them).
RUN=/run/mailfleet-cluster
CONTAINERD_ADDRESS=$RUN/containerd/containerd.sock

# Addresses. The node address sits on an otherwise empty bridge of its own (the
# kernel has no dummy link type), so nothing of the cluster listens on, or
# routes through, the machine's real interfaces. Pods live on a second bridge;
# the service range is routed to that bridge, never to a default route.
NODE_NAME=mailfleet-node
NODE_BRIDGE=mf-node0
NODE_IP=10.250.0.1
# The node's network: its address and those of clients outside the cluster
# that tests make in network namespaces of their own (test/e2e's service
# scenario). Pods route it to the node, so replies reach such clients.
NODE_NET=10.250.0.0/16
POD_BRIDGE=mf-cni0
POD_CIDR=10.244.0.0/24
POD_GW=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
DNS_SVC_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
APISERVER=https://$NODE_IP:6443

# Images. There is no registry: both are built by hack/image and imported.
PAUSE_IMAGE=mailfleet.test/pause:3.10
# The CoreDNS module version hack/cluster/coredns/go.mod requires is the tag.
COREDNS_VERSION=$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" { print $3 }' "$here/coredns/go.mod")
COREDNS_IMAGE=mailfleet.test/coredns:$COREDNS_VERSION

# iptables chain holding the containment rules (filter and mangle FORWARD).
CONTAIN_CHAIN=MAILFLEET-CONTAIN

# The control-plane and node processes, in start order; down.sh stops them in
# reverse. Each has $RUN/<name>.pid and $LOGS/<name>.log.
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy provisioner)

log() { echo "hack/cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

# pid_alive NAME: the component's recorded process is running.
pid_alive() {
  local f=$RUN/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# The machine's interfaces that carry a default route: the ones pod traffic
# must never leave through.
external_ifaces() {
  { ip -4 route show default; ip -6 route show default; } 2>/dev/null |
    sed -n 's/.* dev \([^ ]*\).*/\1/p' | sort -u
}

kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$CL/kubeconfig" "$@"; }
crictl() { "$BIN/crictl" --config "$CONF/crictl.yaml" "$@"; }
ctr() { command ctr --address "$CONTAINERD_ADDRESS" --namespace k8s.io "$@"; }
