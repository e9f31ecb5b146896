#!/usr/bin/env bash
# Installs the Helm v3 CLI into bin/helm from the Go module proxy (there is
# no binary download here). Pinned: helm v4 installs under the same command
# name, and the chart tests are written against v3's behaviour.
#
# Idempotent: bin/.helm.version records the installed version, and a binary
# that reports the pinned version is kept. Expect about 70 s on 2 cores the
# first time.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${HELM_VERSION:-v3.22.0}
mkdir -p bin

if [ -x bin/helm ] && [ "$(cat bin/.helm.version 2>/dev/null)" = "$version" ] &&
  bin/helm version --template '{{.Version}}' 2>/dev/null | grep -qx "$version"; then
  exit 0
fi
echo "hack/install-helm: installing helm $version (about 70 s)" >&2
# CGO off: a static helm, like every other tool built here.
GOBIN="$PWD/bin" CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
  "helm.sh/helm/v3/cmd/helm@$version"
got=$(bin/helm version --template '{{.Version}}')
if [ "$got" != "$version" ]; then
  echo "hack/install-helm: bin/helm reports $got, want $version" >&2
  exit 1
fi
echo "$version" >bin/.helm.version
