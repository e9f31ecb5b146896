#!/usr/bin/env bash
# Builds Prometheus' promtool from the Go module proxy into bin/promtool, so
# the tests check the chart's alerting rules (charts/mailfleet/files/alerts)
# with the tool Prometheus users run: `promtool check rules` and
# `promtool test rules`. There is no binary download.
#
# Usage: hack/build-promtool.sh [-f|--force]
#
# The scratch module hack/promtool/ (its own go.mod and go.sum, checked in)
# pins the version; the build runs with -mod=readonly. Idempotent: a stamp
# beside the binary records the module version and a hash of the scratch
# module, the Go version and this script; a matching stamp skips the build.
# Expect a few minutes on 2 cores the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

force=
case ${1:-} in
  -f | --force) force=1 ;;
  -h | --help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
  "") ;;
  *) echo "hack/build-promtool: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

export CGO_ENABLED=0 GOWORK=off
dir=hack/promtool
mkdir -p bin
out=$PWD/bin/promtool
stamp=bin/.promtool.stamp
version=$(cd "$dir" && go list -mod=readonly -m -f '{{.Version}}' github.com/prometheus/prometheus)
want="promtool $version $(go env GOVERSION) $(cat "$dir"/go.mod "$dir"/go.sum "$dir"/*.go | sha256sum | cut -d' ' -f1) $(sha256sum "$0" | cut -d' ' -f1)"
if [ -z "$force" ] && [ -x "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "hack/build-promtool: building promtool from github.com/prometheus/prometheus@$version ..." >&2
start=$(date +%s)
rm -f "$stamp"
(cd "$dir" && go build -mod=readonly -trimpath -ldflags '-s -w' -o "$out.tmp" github.com/prometheus/prometheus/cmd/promtool)
mv -f "$out.tmp" "$out"
echo "$want" >"$stamp"
echo "hack/build-promtool: built in $(($(date +%s) - start))s" >&2
