#!/usr/bin/env bash
# Builds cert-manager's controllers (this scratch module's main.go) into
# bin/cluster/bin/cert-manager-controller and copies cert-manager's
# cert-manager.io CRDs from the module into bin/cluster/cert-manager-crds.yaml.
# Both come from the Go module proxy: there is no binary or YAML download.
#
# Usage: hack/cluster/cert-manager/build.sh [-f|--force]
#   -f rebuilds even when up to date.
#   CLUSTER_BIN_DIR overrides the output directory (default bin/cluster).
#
# The module has its own go.mod and go.sum, checked in, so the build is
# reproducible, runs with -mod=readonly, and the mailfleet module never sees
# cert-manager's dependencies.
#
# Idempotent: bin/cluster/.cert-manager-controller.stamp records the
# cert-manager version and a hash of the module's sources, the Go version and
# this script; when it matches, nothing is rebuilt. Expect 3-5 minutes on 2
# cores the first time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
self=$here/$(basename "$0") # $0 may be relative to where it was called from
cd "$here/../../.."

force=
for arg in "$@"; do
  case $arg in
    -f | --force) force=1 ;;
    -h | --help) sed -n '2,18s/^# \{0,1\}//p' "$self"; exit 0 ;;
    *) echo "hack/cluster/cert-manager/build.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

out=${CLUSTER_BIN_DIR:-bin/cluster}
mkdir -p "$out/bin"
out=$(cd "$out" && pwd)

export CGO_ENABLED=0 GOWORK=off
mod=github.com/cert-manager/cert-manager
dir=hack/cluster/cert-manager

# Makes sure the module is in the cache, then asks for its version and where
# the cache keeps it (the CRDs are read from there).
(cd "$dir" && go mod download "$mod")
read -r version moddir < <(cd "$dir" && go list -mod=readonly -m -f '{{.Version}} {{.Dir}}' "$mod")

bin=$out/bin/cert-manager-controller
crds=$out/cert-manager-crds.yaml
stamp=$out/.cert-manager-controller.stamp
want="cert-manager-controller $mod@$version $(go env GOVERSION) $(go env GOOS)/$(go env GOARCH) $(
  cat "$dir"/go.mod "$dir"/go.sum "$dir"/main.go | sha256sum | cut -d' ' -f1) $(sha256sum "$self" | cut -d' ' -f1)"

if [ -z "$force" ] && [ -x "$bin" ] && [ -s "$crds" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "hack/cluster/cert-manager: cert-manager-controller ($mod@$version) is up to date" >&2
else
  echo "hack/cluster/cert-manager: building cert-manager-controller from $mod@$version ..." >&2
  start=$(date +%s)
  rm -f "$stamp"
  # AppVersion is what cert-manager's release binaries stamp: it shows in
  # the log and the User-Agent.
  (cd "$dir" && go build -mod=readonly -trimpath \
    -ldflags "-s -w -X $mod/pkg/util.AppVersion=$version" \
    -o "$bin.tmp" .)
  mv -f "$bin.tmp" "$bin"

  # Only the cert-manager.io group: no ACME controller runs here, so the
  # acme.cert-manager.io CRDs (Orders, Challenges) would only invite objects
  # nothing acts on. deploy/crds is what cert-manager's Helm chart templates
  # from, less the chart's labels.
  {
    echo "# cert-manager.io CRDs from $mod@$version deploy/crds, copied by $dir/build.sh."
    for f in "$moddir"/deploy/crds/cert-manager.io_*.yaml; do
      case $(head -n1 "$f") in ---) ;; *) echo "---" ;; esac
      cat "$f"
    done
  } >"$crds.tmp"
  mv -f "$crds.tmp" "$crds"

  echo "$want" >"$stamp"
  echo "hack/cluster/cert-manager: built in $(($(date +%s) - start))s" >&2
fi

echo "  $bin" >&2
echo "  $crds" >&2
