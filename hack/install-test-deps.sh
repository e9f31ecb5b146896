#!/usr/bin/env bash
# Installs the real peers the tests talk to (swaks, Python's smtplib, Postfix's
# smtp-source/smtp-sink, redis-server, dkimpy) from Debian's packages. Idempotent: it
# only calls apt-get when a command is missing, and records success in bin/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin

need=()
command -v swaks >/dev/null || need+=(swaks)
# swaks speaks TLS through Net::SSLeay, which Debian only recommends.
perl -MNet::SSLeay -e1 2>/dev/null || need+=(libnet-ssleay-perl)
command -v python3 >/dev/null || need+=(python3)
[ -x /usr/sbin/smtp-source ] || need+=(postfix)
command -v redis-server >/dev/null || need+=(redis-server)
# dkimpy, an independent DKIM verifier, for Debian's own python3 (the tests
# call /usr/bin/python3: another python3 earlier in PATH lacks the package).
/usr/bin/python3 -c 'import dkim, dns.resolver' 2>/dev/null || need+=(python3-dkim python3-dnspython)

if [ ${#need[@]} -gt 0 ]; then
  echo "hack/install-test-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Postfix asks how to configure itself; a test peer needs no mail system.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Postfix's package may start a master daemon on port 25; tests never need it.
if command -v postfix >/dev/null && pgrep -x master >/dev/null 2>&1; then
  postfix stop >/dev/null 2>&1 || true
fi
touch bin/.test-deps
