#!/usr/bin/env bash
# Builds the container images the single-node cluster (hack/cluster) runs,
# without a Docker engine and without a registry: every file in them is a Go
# build made here or a file of this machine's Debian packages, assembled by
# hack/image (go-containerregistry) into OCI layout archives under bin/images/.
#
# Usage: hack/image/images.sh [build] [NAME...]   build NAMEs (default: all)
#        hack/image/images.sh load [NAME...]      import built archives into the
#                                                 cluster's containerd
#        hack/image/images.sh args NAME           print the builder's content
#                                                 flags for NAME, one a line
#        hack/image/images.sh ref NAME            print NAME's image reference
# NAMEs: mailfleet nats redis smtpsink pause coredns cert-manager
#
# Environment:
#   VERSION              mailfleet's tag and main.version (default: git describe
#                        --tags --always --dirty, else dev), as in the Makefile
#   MAILFLEET_PLATFORMS  mailfleet's platforms (default: linux/amd64 linux/arm64)
#   MAILFLEET_BINARY     mailfleet binary per platform, {arch} for GOARCH
#                        (default: bin/images/.bin/mailfleet-linux-{arch}, built here)
#   CONTAINERD_ADDRESS   for load (default: /run/mailfleet-cluster/containerd/containerd.sock)
#   CONTAINERD_SNAPSHOTTER  for load: unpack into this snapshotter
#   SOURCE_DATE_EPOCH    file and config times (default: 0)
#
# Idempotent: each archive has a stamp (bin/images/.NAME.stamp) hashing the
# builder, its flags and every input file; an image whose stamp matches is not
# assembled again, and the Go builds are `go build`'s own up-to-date checks.
# load skips an image the containerd already has at the same digest.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

imgdir=$root/bin/images
bindir=$imgdir/.bin
builder=$bindir/image
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
all_names=(mailfleet nats redis smtpsink pause coredns cert-manager)
host_arch=$(go env GOARCH)
host_platform=linux/$host_arch
MAILFLEET_PLATFORMS=${MAILFLEET_PLATFORMS:-linux/amd64 linux/arm64}
own_mailfleet="$bindir/mailfleet-linux-{arch}"
MAILFLEET_BINARY=${MAILFLEET_BINARY:-$own_mailfleet}
cluster_bin=$root/bin/cluster/bin

log() { echo "hack/image: $*" >&2; }
die() { log "$*"; exit 1; }

# ---- what each image holds (the builder's flags, -ref and -out aside) ----

# mailfleet: the Dockerfile's final stage, FROM distroless/static:nonroot
# (-base static), COPY of the binary, USER, ENTRYPOINT. test/install's
# TestImageMatchesDockerfile holds these flags to the Dockerfile.
args_mailfleet() {
  local p
  for p in $MAILFLEET_PLATFORMS; do echo -platform; echo "$p"; done
  printf '%s\n' -base static \
    -file "$MAILFLEET_BINARY=/usr/local/bin/mailfleet:0755" \
    -user 65532:65532 \
    -entrypoint /usr/local/bin/mailfleet
}

# nats: nats-server on PATH (the chart's preStop runs `nats-server --signal`),
# as nonroot; the chart passes --config /etc/nats/nats.conf and mounts its
# own /etc/nats over the default configuration here.
args_nats() {
  printf '%s\n' -platform "$host_platform" -base static \
    -file "$bindir/nats-server-linux-{arch}=/usr/local/bin/nats-server:0755" \
    -file "hack/image/nats.conf=/etc/nats/nats.conf:0644" \
    -dir /data:0755:65532:65532 \
    -user 65532:65532 \
    -entrypoint /usr/local/bin/nats-server \
    -cmd --config -cmd /etc/nats/nats.conf
}

# redis: Debian's redis-server with the shared libraries it loads, and a
# shell, because the chart runs `sh -c 'exec redis-server ...'` as uid 999.
args_redis() {
  local lib
  printf '%s\n' -platform "$host_platform" -base static \
    -account redis:999:999:/data \
    -file /usr/bin/redis-server=/usr/bin/redis-server:0755 \
    -file /usr/bin/redis-cli=/usr/bin/redis-cli:0755 \
    -file /bin/busybox=/bin/busybox:0755 \
    -link /bin/sh=busybox \
    -user 999:999 -workdir /data -cmd redis-server
  for lib in $(redis_libs); do printf '%s\n' -file "$lib=$lib:0755"; done
}

# The libraries and the loader ldd names for redis-server and redis-cli, at
# the paths the loader looks them up by.
redis_libs() {
  ldd /usr/bin/redis-server /usr/bin/redis-cli |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(/ { print $1 }' | sort -u
}

args_smtpsink() {
  printf '%s\n' -platform "$host_platform" -base static \
    -file "$bindir/smtpsink-linux-{arch}=/usr/local/bin/smtpsink:0755" \
    -user 65532:65532 \
    -entrypoint /usr/local/bin/smtpsink
}

# pause: the pod sandbox's init process alone, as the nobody-like 65535 the
# upstream pause image uses.
args_pause() {
  printf '%s\n' -platform "$host_platform" -base none \
    -file "$(pause_binary)=/pause:0755" \
    -user 65535:65535 \
    -entrypoint /pause
}

# coredns: like the upstream image, nonroot with cap_net_bind_service on the
# binary, so it binds :53 where the pod keeps NET_BIND_SERVICE (kube's CoreDNS
# Deployment adds it).
args_coredns() {
  printf '%s\n' -platform "$host_platform" -base static \
    -file "$cluster_bin/coredns=/coredns:0755" \
    -cap /coredns=net_bind_service \
    -user 65532:65532 \
    -entrypoint /coredns
}

pause_binary() {
  if [ -x "$cluster_bin/pause" ]; then echo "$cluster_bin/pause"; else echo "$bindir/pause-linux-{arch}"; fi
}

# ---- names and tags ----

mailfleet_version() {
  if [ -n "${VERSION:-}" ]; then echo "$VERSION"; return; fi
  git describe --tags --always --dirty 2>/dev/null || echo dev
}

ref_of() {
  case $1 in
    mailfleet) echo "mailfleet.test/mailfleet:$(mailfleet_version)" ;;
    nats) echo "mailfleet.test/nats:$(go list -m -f '{{.Version}}' github.com/nats-io/nats-server/v2 | sed 's/^v//')" ;;
    # 5:7.0.15-1~deb12u10 -> 7.0.15: the epoch and Debian revision dropped.
    redis) echo "mailfleet.test/redis:$(dpkg-query -W -f '${Version}' redis-server | sed 's/^[0-9]*://; s/-[^-]*$//')" ;;
    smtpsink) echo "mailfleet.test/smtpsink:dev" ;;
    pause) echo "mailfleet.test/pause:3.10" ;;
    coredns) echo "mailfleet.test/coredns:$(coredns_version)" ;;
    cert-manager) echo "mailfleet.test/cert-manager:dev" ;;
  esac
}

# The coredns module version the binary was built from, as Go recorded it.
coredns_version() {
  local v
  v=$(go version -m "$cluster_bin/coredns" 2>/dev/null | awk '$1 == "dep" && $2 == "github.com/coredns/coredns" { print $3 }')
  echo "${v:-dev}"
}

# cert-manager: cert-manager's own controllers wired into a small main
# (hack/cluster/cert-manager), as nonroot; it talks only to the API server.
args_cert-manager() {
  printf '%s\n' -platform "$host_platform" -base static \
    -file "$cluster_bin/cert-manager-controller=/usr/local/bin/cert-manager-controller:0755" \
    -user 65532:65532 \
    -entrypoint /usr/local/bin/cert-manager-controller
}

# ---- the binaries ----

# Debian packages the images take files from; apt-get runs only when one is
# missing, so a warm run never touches the network.
ensure_packages() {
  local -A want=([/usr/bin/redis-server]=redis-server [/usr/bin/redis-cli]=redis-tools
    [/bin/busybox]=busybox-static [/etc/ssl/certs/ca-certificates.crt]=ca-certificates
    [/usr/share/zoneinfo/UTC]=tzdata)
  local f pkgs=()
  for f in "${!want[@]}"; do [ -e "$f" ] || pkgs+=("${want[$f]}"); done
  [ ${#pkgs[@]} -gt 0 ] || return 0
  log "installing Debian packages: ${pkgs[*]}"
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then apt-get update -qq; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
}

build_builder() {
  mkdir -p "$bindir"
  go build -trimpath -o "$builder" ./hack/image
}

# mailfleet exactly as `make build` builds it (CGO off, -trimpath,
# -s -w -X main.version), cross-compiled per platform.
build_mailfleet() {
  local p arch version
  version=$(mailfleet_version)
  # Someone else's binaries (MAILFLEET_BINARY) are taken as they are.
  [ "$MAILFLEET_BINARY" = "$own_mailfleet" ] || return 0
  for p in $MAILFLEET_PLATFORMS; do
    arch=${p#linux/}
    log "go build mailfleet ($p, $version)"
    GOOS=linux GOARCH=$arch go build -trimpath -ldflags "-s -w -X main.version=$version" \
      -o "$bindir/mailfleet-linux-$arch" ./cmd/mailfleet
  done
}

# nats-server's main package at the version go.mod requires: the module is a
# dependency of mailfleet, so its go.sum already pins everything it needs.
build_nats() {
  log "go build nats-server ($host_platform)"
  GOOS=linux GOARCH=$host_arch go build -trimpath -ldflags "-s -w" \
    -o "$bindir/nats-server-linux-$host_arch" github.com/nats-io/nats-server/v2
}

# redis takes its files from Debian's packages (ensure_packages).
build_redis() { :; }

build_smtpsink() {
  log "go build smtpsink ($host_platform)"
  GOOS=linux GOARCH=$host_arch go build -trimpath -ldflags "-s -w" \
    -o "$bindir/smtpsink-linux-$host_arch" ./test/e2e/smtpsink
}

# pause comes from hack/cluster/build.sh (bin/cluster/bin/pause); until that
# has run it is built here from the same source.
build_pause() {
  if [ -x "$cluster_bin/pause" ]; then return; fi
  log "go build pause ($host_platform; bin/cluster/bin/pause is not built yet)"
  GOOS=linux GOARCH=$host_arch go build -trimpath -ldflags "-s -w" \
    -o "$bindir/pause-linux-$host_arch" ./hack/cluster/pause
}

# coredns is only ever built by hack/cluster/build.sh (its own module).
build_coredns() { :; }

# The cert-manager controller's build script keeps it up to date (its own
# module, stamped).
build_cert-manager() { hack/cluster/cert-manager/build.sh >&2; }

# ---- assembling and loading ----

# input_files ARGS...: every file the builder will read for these flags.
input_files() {
  local platforms=() files=() p f
  # Every flag in the args_ functions takes one value.
  while [ $# -gt 1 ]; do
    case $1 in
      -platform) platforms+=("$2") ;;
      -file) files+=("${2%%=*}") ;;
      -base) if [ "$2" = static ]; then files+=(/etc/ssl/certs/ca-certificates.crt /usr/share/zoneinfo/tzdata.zi); fi ;;
    esac
    shift 2
  done
  for f in "${files[@]}"; do
    for p in "${platforms[@]}"; do
      p=${p#*/}
      echo "${f//\{arch\}/${p%%/*}}"
    done
  done | sort -u
}

# assemble NAME: the archive bin/images/NAME.tar and bin/images/NAME.ref
# (REF@DIGEST), unless the stamp says they are current.
assemble() {
  local name=$1 ref out stamp want args f
  ref=$(ref_of "$name")
  mapfile -t args < <("args_$name")
  out=$imgdir/$name.tar stamp=$imgdir/.$name.stamp
  while read -r f; do
    [ -e "$f" ] || die "$name: $f is missing"
  done < <(input_files "${args[@]}")
  want=$({
    echo "$ref $SOURCE_DATE_EPOCH"
    printf '%s\n' "${args[@]}"
    sha256sum "$builder"
    input_files "${args[@]}" | tr '\n' '\0' | xargs -0 -r sha256sum
  } | sha256sum | cut -d' ' -f1)
  if [ -f "$out" ] && [ -s "$imgdir/$name.ref" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    log "$name up to date"
    return
  fi
  "$builder" -ref "$ref" -out "$out" "${args[@]}" >"$imgdir/$name.ref.tmp"
  mv -f "$imgdir/$name.ref.tmp" "$imgdir/$name.ref"
  echo "$want" >"$stamp"
}

build() {
  local names=("$@") name built=() skipped=()
  [ ${#names[@]} -gt 0 ] || names=("${all_names[@]}")
  for name in "${names[@]}"; do
    declare -F "args_$name" >/dev/null || die "unknown image $name (one of: ${all_names[*]})"
  done
  # Once: the tag and the binary's main.version must agree even when a
  # commit lands during the build.
  VERSION=$(mailfleet_version)
  export VERSION
  mkdir -p "$imgdir"
  # One build at a time: two would write the same binaries and archives.
  exec 9>"$imgdir/.lock"
  if ! flock -n 9; then
    log "waiting for another images.sh build to finish"
    flock 9
  fi
  ensure_packages
  build_builder
  for name in "${names[@]}"; do
    if ! available "$name"; then
      skipped+=("$name")
      continue
    fi
    "build_$name"
    assemble "$name"
    built+=("$name")
  done
  summary "${built[@]}"
  for name in "${skipped[@]}"; do
    case $name in
      pause) log "SKIPPED pause: neither bin/cluster/bin/pause nor hack/cluster/pause/main.go exists (hack/cluster/build.sh makes them)" ;;
      coredns) log "SKIPPED coredns: bin/cluster/bin/coredns does not exist (hack/cluster/build.sh builds it)" ;;
    esac
  done
}

# available NAME: false for an image whose binary comes from hack/cluster and
# is not there yet.
available() {
  case $1 in
    pause) [ -x "$cluster_bin/pause" ] || [ -f hack/cluster/pause/main.go ] ;;
    coredns) [ -x "$cluster_bin/coredns" ] ;;
    *) return 0 ;;
  esac
}

summary() {
  local name
  [ $# -gt 0 ] || return 0
  printf '%-10s %9s  %s\n' IMAGE SIZE REF@DIGEST
  for name in "$@"; do
    printf '%-10s %8sM  %s\n' "$name" "$(awk -v b="$(stat -c %s "$imgdir/$name.tar")" 'BEGIN { printf "%.1f", b / 1048576 }')" "$(cat "$imgdir/$name.ref")"
  done
}

load() {
  local names=("$@") name address=${CONTAINERD_ADDRESS:-/run/mailfleet-cluster/containerd/containerd.sock}
  local refdigest ref digest have ctr_args
  [ ${#names[@]} -gt 0 ] || names=("${all_names[@]}")
  command -v ctr >/dev/null || die "ctr is missing (apt-get install containerd)"
  [ -S "$address" ] || die "no containerd socket at $address (is the cluster up? CONTAINERD_ADDRESS overrides)"
  ctr_args=(-n k8s.io --address "$address")
  for name in "${names[@]}"; do
    if [ ! -f "$imgdir/$name.tar" ] || [ ! -s "$imgdir/$name.ref" ]; then
      log "SKIPPED $name: bin/images/$name.tar is not built (hack/image/images.sh $name)"
      continue
    fi
    refdigest=$(cat "$imgdir/$name.ref")
    ref=${refdigest%@*} digest=${refdigest#*@}
    have=$(ctr "${ctr_args[@]}" images ls "name==$ref" | awk 'NR > 1 { print $3 }')
    if [ "$have" = "$digest" ]; then
      log "$ref already loaded ($digest)"
      continue
    fi
    log "importing $ref ($digest)"
    ctr "${ctr_args[@]}" images import ${CONTAINERD_SNAPSHOTTER:+--snapshotter "$CONTAINERD_SNAPSHOTTER"} "$imgdir/$name.tar" >&2
    have=$(ctr "${ctr_args[@]}" images ls "name==$ref" | awk 'NR > 1 { print $3 }')
    [ "$have" = "$digest" ] || die "after import, containerd has $ref at '${have}', want $digest"
  done
}

case ${1:-build} in
  build) [ $# -eq 0 ] || shift; build "$@" ;;
  load) shift; load "$@" ;;
  ref)
    [ $# -eq 2 ] && declare -F "args_$2" >/dev/null || die "usage: $0 ref NAME (one of: ${all_names[*]})"
    ref_of "$2"
    ;;
  args)
    [ $# -eq 2 ] && declare -F "args_$2" >/dev/null || die "usage: $0 args NAME (one of: ${all_names[*]})"
    "args_$2"
    ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" ;;
  -*) die "unknown option $1 (try --help)" ;;
  *) build "$@" ;;
esac
