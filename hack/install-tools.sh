#!/usr/bin/env bash
# Installs the Go tools the build needs into bin/, pinned, from the Go module
# proxy. Idempotent: a tool whose pinned version is already there is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin

install() { # name module version
  local name=$1 module=$2 version=$3 stamp="bin/.$1.version"
  if [ -x "bin/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
    return
  fi
  echo "hack/install-tools: installing $name $version" >&2
  GOBIN="$PWD/bin" GOFLAGS=-mod=mod go install "$module@$version"
  echo "$version" >"$stamp"
}

# controller-tools v0.21.0 is the release for k8s 0.36 (v0.22 needs 0.37).
install controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen v0.21.0
