#!/usr/bin/env bash
# Install the system packages the test suite needs, and only those that are missing.
# Used by `make test` and by .ci/run.  Installing needs root (CI runs as root); a normal
# user is told the exact commands instead.
#
# The suite runs two IMAP servers: Dovecot (installed system-wide) and Cyrus IMAP.
# Debian's cyrus-imapd (imapd, idled) conflicts with dovecot-imapd -- installing one
# removes the other -- so cyrus-imapd is NEVER installed: its .deb is downloaded and
# unpacked into .cache/cyrus-imapd/ of this repository, next to the system's
# cyrus-common (cyrmaster, the libraries), cyrus-admin and sasl2-bin (saslpasswd2),
# which do not conflict.  testsupport/cyrus.py runs the unpacked binaries.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cyrus_dir=.cache/cyrus-imapd
missing=()
# What is actually run: Dovecot's master (dovecot-core) starts /usr/lib/dovecot/imap,
# which is in dovecot-imapd; the master alone fails at the first login.
if [[ ! -x /usr/lib/dovecot/imap ]]; then
    missing+=(dovecot-imapd)  # pulls dovecot-core, which depends on openssl (test certificates)
fi
# Cyrus: cyrmaster and the libraries imapd links against, cyradm, saslpasswd2.
[[ -x /usr/sbin/cyrmaster ]] || missing+=(cyrus-common)
[[ -x /usr/bin/cyradm ]] || missing+=(cyrus-admin)
[[ -x /usr/sbin/saslpasswd2 ]] || missing+=(sasl2-bin)
command -v make >/dev/null 2>&1 || missing+=(make)
# DKIM keys for the trust tests and the demo are made with the openssl command.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
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

# Unpack cyrus-imapd of the same version as the installed cyrus-common (imapd links
# against its libraries) into $cyrus_dir; skipped when that version is already there.
unpack_cyrus_imapd() {
    local version tmp
    version=$(dpkg-query -W -f='${Version}' cyrus-common)
    if [[ -f $cyrus_dir/VERSION && $(cat "$cyrus_dir/VERSION") == "$version" ]]; then
        return 0
    fi
    echo "unpacking cyrus-imapd $version into $cyrus_dir (not installed: it conflicts with dovecot-imapd)"
    mkdir -p .cache
    tmp=$(mktemp -d .cache/cyrus-imapd.XXXXXX)
    # apt-get download writes into the current folder; -o keeps apt's sandbox user
    # from failing on a folder it cannot write.
    if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "cyrus-imapd=$version"); then
        # Stale or missing package lists (a fresh machine whose packages were all there).
        [[ $(id -u) -eq 0 ]] || { rm -rf "$tmp"; return 1; }
        apt-get update
        (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "cyrus-imapd=$version") ||
            { rm -rf "$tmp"; return 1; }
    fi
    # Called under `if !`, where set -e does not apply: every step checks itself, and
    # the VERSION stamp is written last, so a half-done unpack is redone next time.
    dpkg -x "$tmp"/cyrus-imapd_*.deb "$tmp/root" &&
        [[ -x $tmp/root/usr/lib/cyrus/bin/imapd && -x $tmp/root/usr/lib/cyrus/bin/idled ]] &&
        rm -rf "$cyrus_dir" &&
        mv "$tmp/root" "$cyrus_dir" &&
        echo "$version" >"$cyrus_dir/VERSION" ||
        { rm -rf "$tmp"; return 1; }
    rm -rf "$tmp"
}

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing system packages: ${missing[*]}" >&2
        echo "install them with:" >&2
        echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        echo "then rerun $0, which unpacks cyrus-imapd into $cyrus_dir" >&2
        echo "(never install the cyrus-imapd package through apt: it removes dovecot-imapd)" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The tests start private Dovecot, Cyrus, Redis and NATS instances: keep the packages from
    # starting the system-wide ones (policy-rc.d exit 101 = "do not start services").
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Downloading and unpacking needs no root: any user with apt's package lists can.
if ! unpack_cyrus_imapd; then
    echo "could not unpack cyrus-imapd into $cyrus_dir; by hand:" >&2
    echo "  mkdir -p /tmp/cyrus-deb && cd /tmp/cyrus-deb && apt-get download cyrus-imapd=$(dpkg-query -W -f='${Version}' cyrus-common)" >&2
    echo "  dpkg -x /tmp/cyrus-deb/cyrus-imapd_*.deb $PWD/$cyrus_dir" >&2
    echo "  dpkg-query -W -f='\${Version}' cyrus-common >$PWD/$cyrus_dir/VERSION" >&2
    echo "(never install the cyrus-imapd package through apt: it removes dovecot-imapd)" >&2
    exit 1
fi
