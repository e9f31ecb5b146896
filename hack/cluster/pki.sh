#!/usr/bin/env bash
# Makes the single-node cluster's certificates and kubeconfigs under
# bin/cluster/pki/ and bin/cluster/, because a real API server needs TLS and
# an identity per component (the Node authorizer and the RBAC bootstrap roles
# key on these names) and nothing may be downloaded: openssl does it here.
#
# Usage: hack/cluster/pki.sh [-f|--force]   (up.sh runs it)
#   -f makes new ones even when the existing ones are current.
#
# Idempotent: bin/cluster/pki/.stamp holds a hash of this script and of the
# names and addresses from lib.sh that the certificates carry; while it
# matches, nothing is made. The certificates are valid for 10 years; ECDSA
# P-256 keys keep generation to about a second.
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

force=
for arg in "$@"; do
  case $arg in
    -f | --force) force=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument: $arg (try --help)" ;;
  esac
done

want="$({ cat "$0"; echo "$NODE_NAME $NODE_IP $KUBERNETES_SVC_IP $CLUSTER_DOMAIN $APISERVER"; } |
  sha256sum | cut -d' ' -f1)"
if [ -z "$force" ] && [ -f "$PKI/.stamp" ] && [ "$(cat "$PKI/.stamp")" = "$want" ] &&
  [ -f "$CL/kubeconfig" ]; then
  exit 0
fi

# New certificates under a running cluster would leave its pods with service
# account tokens of the old key until the kubelet renews them, up to an hour.
# down.sh wipes the cluster's state, so they are made at the next up.sh.
if [ -f "$CL/kubeconfig" ] && pid_alive kube-apiserver; then
  log "certificates are out of date but the cluster is running; keeping them until after down.sh"
  exit 0
fi

umask 077
rm -rf "$PKI"
mkdir -p "$PKI" "$CONF"
cd "$PKI"

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }

openssl_quiet() { openssl "$@" 2>/dev/null || { openssl "$@"; exit 1; }; }

# The cluster's one CA signs every serving and client certificate.
newkey ca
openssl_quiet req -x509 -new -key ca.key -out ca.crt -days 3650 -subj "/CN=mailfleet-cluster-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# cert NAME SUBJECT USAGE [SANS]: a leaf certificate signed by the CA.
cert() {
  local name=$1 subj=$2 usage=$3 sans=${4:-}
  newkey "$name"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -z "$sans" ] || echo "subjectAltName=$sans"
  } >"$name.ext"
  openssl_quiet req -new -key "$name.key" -subj "$subj" -out "$name.csr"
  openssl_quiet x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile "$name.ext" -out "$name.crt"
  rm -f "$name.csr" "$name.ext"
}

cert apiserver "/CN=kube-apiserver" serverAuth \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP,IP:127.0.0.1"
# kubectl logs/exec: the API server's identity towards the kubelet; bound to
# system:kubelet-api-admin by manifests/rbac.yaml.
cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" clientAuth
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" serverAuth "DNS:$NODE_NAME,IP:$NODE_IP"
cert kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
cert kube-scheduler "/CN=system:kube-scheduler" clientAuth
cert kube-proxy "/CN=system:kube-proxy" clientAuth
cert provisioner "/CN=mailfleet:hostpath-provisioner" clientAuth
cert admin "/O=system:masters/CN=mailfleet-admin" clientAuth
# Service account tokens are signed with their own key.
newkey sa
openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
rm -f ca.srl

# kubeconfig FILE CERT: a kubeconfig for the identity in CERT, with the
# certificates inlined so the file stands alone.
kubeconfig() {
  local file=$1 cert=$2
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mailfleet
  cluster:
    server: $APISERVER
    certificate-authority-data: $(base64 -w0 ca.crt)
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 "$cert.crt")
    client-key-data: $(base64 -w0 "$cert.key")
contexts:
- name: mailfleet
  context:
    cluster: mailfleet
    user: $cert
current-context: mailfleet
EOF
}

for c in kubelet kube-controller-manager kube-scheduler kube-proxy provisioner; do
  kubeconfig "$CONF/$c.kubeconfig" "$c"
done
kubeconfig "$CL/kubeconfig" admin
echo "$want" >"$PKI/.stamp"
log "made certificates in $PKI and the cluster-admin kubeconfig $CL/kubeconfig"
