#!/usr/bin/env bash
# Installs what `make bench-peers` runs beside the relay: the test peers
# (Postfix, smtp-source, smtp-sink, redis-server: hack/install-test-deps.sh),
# gnuplot for the charts (Debian's package) and Haraka 3 (npm, into
# bin/haraka). Idempotent: it installs only what is missing.
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
