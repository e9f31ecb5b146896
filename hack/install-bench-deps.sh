#!/usr/bin/env bash
# Installs what `make bench-peers` runs beside the relay: the test peers
# (Postfix, smtp-source, smtp-sink, redis-server: hack/install-test-deps.sh),
# gnuplot for the charts (Debian's package), Haraka 3 (npm, into
# bin/haraka) and Envoy's ratelimit (Go module proxy, into
# bin/envoy-ratelimit). Idempotent: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install-test-deps.sh

haraka_version=3.3.4

if ! command -v gnuplot >/dev/null; then
  echo "hack/install-bench-deps: installing gnuplot" >&2
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null
fi

if [ ! -x bin/haraka/node_modules/.bin/haraka ] ||
   ! grep -q "\"version\": \"$haraka_version\"" bin/haraka/node_modules/Haraka/package.json; then
  echo "hack/install-bench-deps: installing Haraka $haraka_version with npm" >&2
  mkdir -p bin/haraka
  (cd bin/haraka && npm install --silent --no-audit --no-fund "Haraka@$haraka_version" >/dev/null)
fi

# Envoy's rate limit service, the peer of the rate-limit sidecar, built from
# the Go module proxy at a pinned version (its code is not in this
# repository).
envoy_ratelimit_version=v1.4.1-0.20260122083618-3fb702589d36
envoy_dir=bin/envoy-ratelimit/$envoy_ratelimit_version
if [ ! -x "$envoy_dir/service_cmd" ]; then
  echo "hack/install-bench-deps: building Envoy's ratelimit $envoy_ratelimit_version" >&2
  mkdir -p "$envoy_dir"
  GOBIN="$PWD/$envoy_dir" go install "github.com/envoyproxy/ratelimit/src/service_cmd@$envoy_ratelimit_version"
fi
ln -sfn "$envoy_ratelimit_version/service_cmd" bin/envoy-ratelimit/service_cmd
