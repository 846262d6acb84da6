#!/usr/bin/env bash
# Install Stima on a substation controller (Debian 12 / Raspberry Pi OS bookworm, x86_64 or aarch64).
#
#   sudo deploy/install.sh [--prefix /opt/stima] [--no-start]
#
# Creates the 'stima' system user and group, a virtualenv in PREFIX/venv with the package
# built from this source tree (the C protection core is compiled here), the systemd unit, and
# /etc/stima/site.toml from the example when none exists. An existing site file is never
# overwritten. Run again to upgrade in place.
set -euo pipefail

PREFIX=/opt/stima
START=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=$2; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo $0)" >&2
    exit 1
fi
SRC=$(cd "$(dirname "$0")/.." && pwd)
# The service runs as 'stima': its virtualenv must be built on an interpreter that user can run,
# so the system's Python comes first (a per-user install such as pyenv under /root is not).
PY=${PYTHON:-}
for candidate in /usr/bin/python3.11 /usr/bin/python3 "$(command -v python3.11 || true)" "$(command -v python3 || true)"; do
    if [ -z "$PY" ] && [ -n "$candidate" ] && [ -x "$candidate" ]; then
        PY=$candidate
    fi
done
if [ -z "$PY" ]; then
    echo "install.sh: no python3 found; install Debian's python3 (>= 3.11) first" >&2
    exit 1
fi

PYTHON=$PY bash "$SRC/deploy/system-deps.sh"

if ! getent group stima >/dev/null; then
    groupadd --system stima
fi
if ! getent passwd stima >/dev/null; then
    useradd --system --gid stima --groups dialout --home-dir /var/lib/stima --no-create-home \
        --shell /usr/sbin/nologin --comment "Stima substation gateway" stima
fi

if ! runuser -u stima -- "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install.sh: $PY is not a Python >= 3.11 the 'stima' user can run; set PYTHON=/usr/bin/python3.11" >&2
    exit 1
fi

install -d -m 0755 "$PREFIX"
if [ -x "$PREFIX/venv/bin/python" ] && ! runuser -u stima -- "$PREFIX/venv/bin/python" -c pass 2>/dev/null; then
    echo "install.sh: $PREFIX/venv was built on an interpreter 'stima' cannot run; rebuilding it"
    rm -rf "$PREFIX/venv"
fi
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    "$PY" -m venv "$PREFIX/venv"
fi
"$PREFIX/venv/bin/python" -m pip install -q --upgrade pip
"$PREFIX/venv/bin/python" -m pip install -q "$SRC"
install -m 0644 "$SRC/README.md" "$PREFIX/README.md"
ln -sf "$PREFIX/venv/bin/stima" /usr/local/bin/stima
ln -sf "$PREFIX/venv/bin/stima-hil" /usr/local/bin/stima-hil

install -d -m 0750 -o root -g stima /etc/stima /etc/stima/tls
if [ ! -e /etc/stima/site.toml ]; then
    install -m 0640 -o root -g stima "$SRC/deploy/examples/sub-003.toml" /etc/stima/site.toml
    echo "install.sh: example site installed as /etc/stima/site.toml — edit it for this substation"
fi
# Signed SCADA commands use Ed25519 keys (public keys in the gateway's key book, `stima keys add`);
# this folder is for a shared secret only if the site file chooses the hmac compatibility scheme.
install -d -m 0750 -o root -g stima /etc/stima/keys
install -d -m 0755 /etc/stima/examples
install -m 0644 "$SRC"/deploy/examples/*.toml /etc/stima/examples/

sed "s#/opt/stima/#$PREFIX/#g" "$SRC/systemd/stima-gatewayd.service" > /etc/systemd/system/stima-gatewayd.service
chmod 0644 /etc/systemd/system/stima-gatewayd.service
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable stima-gatewayd.service
    if [ "$START" -eq 1 ]; then
        if "$PREFIX/venv/bin/stima" config validate /etc/stima/site.toml; then
            systemctl restart stima-gatewayd.service
        else
            echo "install.sh: fix /etc/stima/site.toml, then: systemctl start stima-gatewayd" >&2
        fi
    fi
fi
echo "install.sh: done. Status: systemctl status stima-gatewayd; stima status"
