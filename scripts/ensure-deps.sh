#!/usr/bin/env bash
# Install the system packages the test suite needs, and only those that are missing.
# Used by `make test` and by .ci/run.  Installing needs root (CI runs as root); a normal
# user is told the exact command instead.
set -euo pipefail

missing=()
# Debian puts dovecot in /usr/sbin, which a normal user's PATH may lack.
if ! command -v dovecot >/dev/null 2>&1 && [[ ! -x /usr/sbin/dovecot ]]; then
    missing+=(dovecot-imapd)  # pulls dovecot-core, which depends on openssl (test certificates)
fi
command -v make >/dev/null 2>&1 || missing+=(make)
# Debian's python3 ships venv and ensurepip in a separate package.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# `systemd-analyze security --offline` scores the unit in contrib/systemd/.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# The redis and nats sinks are tested against private redis-server and
# nats-server -js instances that the suite starts itself (never the packages' services).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! command -v nats-server >/dev/null 2>&1 && [[ ! -x /usr/sbin/nats-server ]]; then
    missing+=(nats-server)  # in /usr/sbin too
fi

if ((${#missing[@]} == 0)); then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "missing system packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The tests start private Dovecot, Redis and NATS instances: keep the packages from
# starting the system-wide ones (policy-rc.d exit 101 = "do not start services").
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
