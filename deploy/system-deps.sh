#!/usr/bin/env bash
# Make sure the Debian packages Stima's build, tests and demo need are present.
# Installs missing ones with apt-get when run as root; otherwise names them and stops.
set -euo pipefail

PY=${PYTHON:-python3}
missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# the unit's ExecReload runs /bin/kill; tests check the unit with systemd-analyze verify
[ -x /bin/kill ] || missing+=(procps)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# the HMI's browser tests drive Debian's headless Chromium through its ChromeDriver
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if ! "$PY" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    missing+=(python3-dev)
fi
if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "stima: missing system packages: ${missing[*]} — run 'sudo apt-get install ${missing[*]}' (or run make as root)" >&2
    exit 1
fi
echo "stima: installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package starts a system broker; Stima's tests and demo run their own.
if [[ " ${missing[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
