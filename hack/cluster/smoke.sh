#!/usr/bin/env bash
# Checks that the cluster hack/cluster/up.sh brought up can run what the e2e
# tests need, and that it is contained, so a broken node shows up here rather
# than as a puzzling e2e failure:
#   - node Ready, CoreDNS ready
#   - in a namespace enforcing the "restricted" Pod Security Standard: a pod
#     of the pause image; a web server pod and a client pod (the redis image,
#     which carries busybox); a ClusterIP Service reached from the host and,
#     by its DNS name, from a pod; kubectl logs and kubectl exec; a claim of
#     the default StorageClass written by a non-root pod
#   - containment: a pod has no route off the machine, cannot reach the
#     machine's gateway, and CoreDNS resolves no outside name
#
# Usage: hack/cluster/smoke.sh [--keep]   (make cluster-smoke)
#   Needs the redis image loaded (make images-load, or
#   hack/image/images.sh build redis && hack/image/images.sh load redis).
#   --keep leaves the namespace mailfleet-smoke for a look around.
#
# Idempotent: it deletes and re-creates its namespace; nothing else changes.
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

keep=
case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  --keep) keep=1 ;;
  "") ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

ns=mailfleet-smoke
failures=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
# eventually COMMAND...: COMMAND succeeds within 20 s. A Service works only
# once kube-proxy has programmed its endpoints, a moment after the pod is Ready.
eventually() {
  local i
  for ((i = 0; i < 20; i++)); do
    "$@" 2>/dev/null && return 0
    sleep 1
  done
  "$@"
}
check() { # DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

images=$(ctr images ls -q)
redis_image=$(grep -m1 '^mailfleet.test/redis:' <<<"$images") ||
  die "no mailfleet.test/redis image in containerd; run: make images-load"

check "node $NODE_NAME is Ready" kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=60s
check "CoreDNS is available" kubectl -n kube-system wait --for=condition=Available deployment/coredns --timeout=60s

kubectl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $ns
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
EOF

# The pod-level securityContext the restricted standard asks for (and a short
# grace period: busybox as PID 1 ignores SIGTERM, so deletion would wait 30 s).
restricted='
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    runAsUser: 999
    runAsGroup: 999
    seccompProfile: {type: RuntimeDefault}'
ctr_restricted='
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}'

kubectl -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: pause}
spec:$restricted
  containers:
    - name: pause
      image: $PAUSE_IMAGE$ctr_restricted
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:$restricted
  containers:
    - name: web
      image: $redis_image
      command: [sh, -c, 'mkdir -p /tmp/www && echo hello-from-web >/tmp/www/index.html && echo web serving && exec busybox httpd -f -p 8080 -h /tmp/www']
      ports: [{containerPort: 8080}]$ctr_restricted
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:$restricted
  containers:
    - name: client
      image: $redis_image
      command: [sh, -c, 'echo written-by-\$(id -u) >/data/file && exec sleep 3600']
      volumeMounts: [{name: data, mountPath: /data}]$ctr_restricted
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: data}
EOF
check "pause, web and client pods are Ready (restricted namespace)" \
  kubectl -n "$ns" wait --for=condition=Ready pod/pause pod/web pod/client --timeout=90s

# The checks are functions: they use the kubectl of lib.sh (this cluster's
# kubeconfig), which a `bash -c` would not see.
# The redis image has busybox and /bin/sh, but no applet links.
in_pod() { kubectl -n "$ns" exec "$1" -- busybox "${@:2}"; }
ip=$(kubectl -n "$ns" get service web -o jsonpath='{.spec.clusterIP}')
web_from_host() { curl -sS --max-time 5 "http://$ip/" | grep -q hello-from-web; }
# (busybox's wget crashes in this image; nc speaks the HTTP as well.)
web_from_pod() {
  in_pod client sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | busybox nc -w 5 web.$ns.svc.$CLUSTER_DOMAIN 80" |
    grep -q hello-from-web
}
logs_work() { kubectl -n "$ns" logs web | grep -q 'web serving'; }
exec_works() { [ "$(in_pod web id -u)" = 999 ]; }
volume_works() { in_pod client cat /data/file | grep -q written-by-999; }
apiserver_from_pod() { in_pod client nc -w 3 "kubernetes.default.svc.$CLUSTER_DOMAIN" 443 </dev/null; }
check "Service web ($ip) reached from the host" eventually web_from_host
check "Service web reached from a pod by its DNS name" eventually web_from_pod
check "kubectl logs" logs_work
check "kubectl exec" exec_works
check "the claim is bound and a non-root pod wrote to it" volume_works
check "the API server's Service is reached from a pod" apiserver_from_pod

# Containment, seen from inside a pod. Each negative check first makes sure
# the command ran at all, so a broken exec cannot pass for containment.
no_default_route() {
  local routes
  routes=$(in_pod client ip route) || return 1
  grep -q "$SERVICE_CIDR" <<<"$routes" && ! grep -q '^default' <<<"$routes"
}
gateway_unreachable() { # the machine's gateway, off the machine
  in_pod client sh -c "busybox nc -w 3 $1 53 </dev/null 2>&1; true" | grep -q 'Network is unreachable'
}
dns_cluster() { in_pod client nslookup "kubernetes.default.svc.$CLUSTER_DOMAIN" "$DNS_SVC_IP" | grep -q "$KUBERNETES_SVC_IP"; }
dns_outside() { # CoreDNS answers, and the answer is a failure
  in_pod client sh -c "busybox nslookup example.com $DNS_SVC_IP 2>&1; true" |
    grep -q "server can't find example.com: SERVFAIL"
}
rules_first() {
  [ "$(iptables -S FORWARD 2>/dev/null | sed -n 2p)" = "-A FORWARD -j $CONTAIN_CHAIN" ] &&
    [ "$(iptables -t mangle -S FORWARD 2>/dev/null | sed -n 2p)" = "-A FORWARD -j $CONTAIN_CHAIN" ]
}
check "a pod has no default route, only the cluster's routes" no_default_route
gw=$(ip -4 route show default | awk '{ print $3; exit }')
if [ -n "$gw" ]; then
  check "a pod cannot reach the machine's gateway $gw" gateway_unreachable "$gw"
fi
check "CoreDNS resolves cluster names" dns_cluster
check "CoreDNS resolves no outside name" dns_outside
check "containment rules are first in FORWARD (filter and mangle)" rules_first

if [ -z "$keep" ]; then
  kubectl delete namespace "$ns" --wait=false >/dev/null
fi
if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed; logs are in $LOGS"
  exit 1
fi
echo "all checks passed"
