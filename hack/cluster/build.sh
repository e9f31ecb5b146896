#!/usr/bin/env bash
# Builds everything the single-node cluster (hack/cluster/up.sh) runs, from
# source, because this project downloads no prebuilt binaries or images:
#   - kube-apiserver, etcd, kubectl: hack/build-envtest.sh (bin/k8s/)
#   - kube-controller-manager, kube-scheduler, kubelet, kube-proxy: the scratch
#     module hack/cluster/k8s/ (k8s.io/kubernetes via the Go module proxy)
#   - coredns: the scratch module hack/cluster/coredns/ (only the plugins the
#     cluster uses, and no forward plugin, so it cannot reach an upstream)
#   - crictl: the scratch module hack/cluster/crictl/ (down.sh removes pods
#     through it)
#   - pause: hack/cluster/pause/ (the pod sandbox's init process)
#   - provisioner: hack/cluster/provisioner/ (hostPath volumes for claims)
# into bin/cluster/bin/, and installs the Debian packages the node needs
# (containerd, runc, CNI plugins, iptables, conntrack) when they are missing.
#
# Usage: hack/cluster/build.sh [-f|--force] [--no-apt]
#   -f rebuilds even when up to date; --no-apt skips the package check.
#
# Idempotent: each binary has a stamp (bin/cluster/bin/.<name>.stamp) holding
# the module version and a hash of its inputs, the Go version and this script;
# a binary whose stamp matches is not rebuilt, so a second run takes seconds.
# The first run takes 15-30 minutes on 2 cores, depending on what else runs
# and on what the Go build cache already holds (mostly the Kubernetes compile).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

force='' apt=1
for arg in "$@"; do
  case $arg in
    -f | --force) force=1 ;;
    --no-apt) apt= ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "hack/cluster/build: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

out=$root/bin/cluster/bin
mkdir -p "$out"
log() { echo "hack/cluster/build: $*" >&2; }

# Debian packages. apt-get only runs when a command is missing, so a warm run
# never touches the network. Debian's containerd unit is never enabled: up.sh
# runs its own containerd with its own config, socket and state.
install_packages() {
  local -A pkg_of=([containerd]=containerd [runc]=runc [ctr]=containerd
    [iptables]=iptables [conntrack]=conntrack [/usr/lib/cni/bridge]=containernetworking-plugins)
  local cmd pkgs=()
  for cmd in "${!pkg_of[@]}"; do
    if [[ $cmd == /* ]]; then [ -x "$cmd" ] && continue; else command -v "$cmd" >/dev/null && continue; fi
    pkgs+=("${pkg_of[$cmd]}")
  done
  [ ${#pkgs[@]} -gt 0 ] || return 0
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  log "installing Debian packages: ${pkgs[*]}"
  # The package lists may be absent on a fresh machine; update once.
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then apt-get update -qq; fi
  # policy-rc.d keeps the containerd package from starting its service where an
  # init system would do so; only up.sh's containerd may run.
  local prc=/usr/sbin/policy-rc.d created=
  if [ ! -e $prc ]; then printf '#!/bin/sh\nexit 101\n' >$prc && chmod +x $prc && created=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
  [ -z "$created" ] || rm -f $prc
}

export CGO_ENABLED=0 GOWORK=off GOFLAGS=-buildvcs=false
goversion="$(go env GOVERSION) $(go env GOOS)/$(go env GOARCH)"
script_sum=$(sha256sum "$0" | cut -d' ' -f1)

# What k8s.io/kubernetes' release build stamps into a binary, as far as a
# module zip can tell: the version and the release date (hack/build-envtest.sh
# does the same for kube-apiserver).
kube_ldflags() { # $1 = v1.X.Y, $2 = RFC 3339 date
  local v=$1 date=$2 major minor flags=() pkg
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    flags+=("-X $pkg.gitVersion=$v" "-X $pkg.gitMajor=$major" "-X $pkg.gitMinor=$minor"
      "-X $pkg.buildDate=$date" "-X $pkg.gitTreeState=clean")
  done
  echo "${flags[*]}"
}

# up_to_date NAME... WANT: true when every binary exists and its stamp is WANT.
up_to_date() {
  local want=${*: -1} name
  [ -z "$force" ] || return 1
  for name in "${@:1:$#-1}"; do
    [ -x "$out/$name" ] && [ -f "$out/.$name.stamp" ] && [ "$(cat "$out/.$name.stamp")" = "$want" ] || return 1
  done
}

# stamp_all NAME... WANT
stamp_all() {
  local want=${*: -1} name
  for name in "${@:1:$#-1}"; do echo "$want" >"$out/.$name.stamp"; done
}

# The four Kubernetes commands are built by one `go build` so they share one
# compile of the packages they have in common.
build_kube() {
  local dir=hack/cluster/k8s names=(kube-controller-manager kube-scheduler kubelet kube-proxy)
  local version date want start tmp n
  read -r version date < <(cd "$dir" &&
    go list -mod=readonly -m -f '{{.Version}} {{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
  want="k8s.io/kubernetes@$version $goversion $(cat "$dir"/go.mod "$dir"/go.sum | sha256sum | cut -d' ' -f1) $script_sum"
  if up_to_date "${names[@]}" "$want"; then log "${names[*]} ($version) up to date"; return; fi
  log "building ${names[*]} from k8s.io/kubernetes@$version (about 9 minutes on 2 cores the first time) ..."
  start=$(date +%s)
  tmp=$out/.kube.tmp
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$dir" && go build -mod=readonly -trimpath -ldflags "-s -w $(kube_ldflags "$version" "$date")" \
    -o "$tmp/" "${names[@]/#/k8s.io/kubernetes/cmd/}")
  for n in "${names[@]}"; do mv -f "$tmp/$n" "$out/$n"; done
  rmdir "$tmp"
  stamp_all "${names[@]}" "$want"
  log "built ${names[*]} in $(($(date +%s) - start))s"
}

build_coredns() {
  local dir=hack/cluster/coredns version want start
  version=$(cd "$dir" && go list -mod=readonly -m -f '{{.Version}}' github.com/coredns/coredns)
  want="github.com/coredns/coredns@$version $goversion $(cat "$dir"/go.mod "$dir"/go.sum "$dir"/*.go | sha256sum | cut -d' ' -f1) $script_sum"
  if up_to_date coredns "$want"; then log "coredns ($version) up to date"; return; fi
  log "building coredns from github.com/coredns/coredns@$version ..."
  start=$(date +%s)
  (cd "$dir" && go build -mod=readonly -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$version" -o "$out/.coredns.tmp" .)
  mv -f "$out/.coredns.tmp" "$out/coredns"
  stamp_all coredns "$want"
  log "built coredns in $(($(date +%s) - start))s"
}

build_crictl() {
  local dir=hack/cluster/crictl version want
  version=$(cd "$dir" && go list -mod=readonly -m -f '{{.Version}}' sigs.k8s.io/cri-tools)
  want="sigs.k8s.io/cri-tools@$version $goversion $(cat "$dir"/go.mod "$dir"/go.sum | sha256sum | cut -d' ' -f1) $script_sum"
  if up_to_date crictl "$want"; then log "crictl ($version) up to date"; return; fi
  log "building crictl from sigs.k8s.io/cri-tools@$version ..."
  (cd "$dir" && go build -mod=readonly -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$version" \
    -o "$out/.crictl.tmp" sigs.k8s.io/cri-tools/cmd/crictl)
  mv -f "$out/.crictl.tmp" "$out/crictl"
  stamp_all crictl "$want"
}

# pause and the provisioner live in the mailfleet module itself (go.mod and
# go.sum are part of their stamp, since the provisioner uses client-go).
build_main_module() { # $1 = name under hack/cluster/
  local name=$1 want
  want="$name $goversion $(cat go.mod go.sum hack/cluster/"$name"/*.go | sha256sum | cut -d' ' -f1) $script_sum"
  if up_to_date "$name" "$want"; then log "$name up to date"; return; fi
  go build -mod=readonly -trimpath -ldflags "-s -w" -o "$out/.$name.tmp" "./hack/cluster/$name"
  mv -f "$out/.$name.tmp" "$out/$name"
  stamp_all "$name" "$want"
  log "built $name"
}

[ -z "$apt" ] || install_packages
# kube-apiserver, etcd and kubectl are the envtest ones; one build serves both.
hack/build-envtest.sh ${force:+-f} >/dev/null
build_main_module pause
build_main_module provisioner
build_coredns
build_crictl
build_kube
