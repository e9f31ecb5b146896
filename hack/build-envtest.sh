#!/usr/bin/env bash
# Builds the binaries envtest needs (kube-apiserver, etcd) plus kubectl from the
# Go module proxy into bin/k8s/ — there is no binary download.
#
# Usage: hack/build-envtest.sh [-f|--force] [kube-apiserver|etcd|kubectl ...]
#   With no names it builds all three. -f rebuilds even when up to date.
#   ENVTEST_BIN_DIR overrides the output directory (default bin/k8s).
#   Afterwards: export KUBEBUILDER_ASSETS="$PWD/bin/k8s"
#
# Each binary comes from a scratch module under hack/envtest/<name>/ whose
# go.mod and go.sum are checked in, so the build is reproducible and runs with
# -mod=readonly. The scratch modules have their own go.mod, so the mailfleet
# module's ./... never descends into them.
#
# Idempotent: next to each binary, bin/k8s/.<name>.stamp records the module
# version and a hash of the scratch module, the Go version and this script; a
# binary whose stamp matches is not rebuilt. Expect about 4 minutes for
# kube-apiserver on 2 cores the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

force=
names=()
for arg in "$@"; do
  case $arg in
    -f | --force) force=1 ;;
    kube-apiserver | etcd | kubectl) names+=("$arg") ;;
    -h | --help) sed -n '2,18s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "hack/build-envtest: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=(kube-apiserver etcd kubectl)

out=${ENVTEST_BIN_DIR:-bin/k8s}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The module whose version a binary reports, per scratch module.
main_module() {
  case $1 in
    kube-apiserver) echo k8s.io/kubernetes ;;
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    kubectl) echo k8s.io/kubectl ;;
  esac
}

# What k8s.io/kubernetes' hack/lib/version.sh stamps into a release binary, as
# far as a module zip can tell: the version and the release's date (the
# commit is not known outside git, so it is left at its default).
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

export CGO_ENABLED=0 GOWORK=off
goversion=$(go env GOVERSION)
script_sum=$(sha256sum "$0" | cut -d' ' -f1)

build() {
  local name=$1 dir=hack/envtest/$1 mod info version date ldflags stamp want start
  mod=$(main_module "$name")
  # The version and release date of the module, from go.mod and the module cache.
  info=$(cd "$dir" &&
    go list -mod=readonly -m -f '{{.Version}} {{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "$mod")
  read -r version date <<<"$info"
  ldflags="-s -w"
  case $name in
    kube-apiserver) ldflags+=" $(kube_ldflags "$version" "$date")" ;;
    kubectl) ldflags+=" $(kube_ldflags "v1.${version#v0.}" "$date")" ;;
  esac

  stamp=$out/.$name.stamp
  want="$name $mod@$version $goversion $(go env GOOS)/$(go env GOARCH) $(
    cat "$dir"/go.mod "$dir"/go.sum "$dir"/*.go | sha256sum | cut -d' ' -f1) $script_sum"
  if [ -z "$force" ] && [ -x "$out/$name" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "hack/build-envtest: $name ($mod@$version) is up to date" >&2
    return
  fi

  echo "hack/build-envtest: building $name from $mod@$version ..." >&2
  start=$(date +%s)
  rm -f "$stamp"
  (cd "$dir" && go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$out/.$name.tmp" .)
  mv -f "$out/.$name.tmp" "$out/$name"
  echo "$want" >"$stamp"
  echo "hack/build-envtest: built $name in $(($(date +%s) - start))s" >&2
}

for name in "${names[@]}"; do
  build "$name"
done

echo "hack/build-envtest: binaries are in $out:" >&2
for name in "${names[@]}"; do
  echo "  $out/$name" >&2
done
echo "export KUBEBUILDER_ASSETS=$out"
