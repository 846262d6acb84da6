#!/usr/bin/env bash
# `make fresh-check`: does Stima build, pass its tests and run its demo on a fresh minimal Debian 12?
#
# Builds (once, then reuses) a debootstrap `minbase` root of Debian 12 with only python3,
# python3-venv, python3-dev, gcc, make and git; lays a throw-away copy of it over the cache
# (overlayfs), clones the current commit into it, and runs as root with no standard input:
#
#     make test          (every test; it installs what it needs through deploy/system-deps.sh)
#     make demo          (short: DEMO_ARGS, by default 40 s with the fault and the SCADA commands)
#
# inside new PID and mount namespaces (nothing started inside outlives the check), with /proc,
# /sys, /dev, /dev/pts and a tmpfs /tmp mounted. The network is the host's: apt reaches Debian's
# mirror and pip reaches PyPI the way this machine does (its resolv.conf, CA bundle and pip
# certificate setting are copied in; nothing else of the host is).
#
# Needs root, debootstrap (apt-get install debootstrap) and a kernel with overlayfs.
# Options (environment): FRESH_CACHE (default /var/cache/stima-fresh), FRESH_REBUILD=1 to
# rebuild the cached root, FRESH_KEEP=1 to keep the scratch root, DEMO_ARGS, PYTEST_ARGS.
# Exit status: 0 when both passed, 1 when either failed, 3 when the root could not be built
# (no debootstrap, no mirror). Uncommitted changes are not part of the check (it clones).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FRESH_CACHE:-/var/cache/stima-fresh}
suite=bookworm
mirror=${FRESH_MIRROR:-http://deb.debian.org/debian}
base="$cache/$suite-minbase"
demo_args=${DEMO_ARGS:---duration 40 --fault-at 5 --scada-at 10}

say() { printf 'fresh-check: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { say "run as root (it builds a chroot and mounts into it)"; exit 2; }
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } \
        || { say "debootstrap is missing and could not be installed"; exit 3; }
fi

sha=$(git -C "$repo" rev-parse HEAD)
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    say "note: uncommitted changes in $repo are not checked (the check clones commit ${sha:0:12})"
fi

t0=$(date +%s)
if [ "${FRESH_REBUILD:-0}" = 1 ] || [ ! -e "$base/.stima-fresh-ok" ]; then
    say "building the minimal Debian 12 root in $base (debootstrap --variant=minbase)"
    rm -rf "$base.new"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,gcc,make,git \
        "$suite" "$base.new" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { say "debootstrap failed: see $cache/debootstrap.log"; tail -n 5 "$cache/debootstrap.log" >&2; exit 3; }
    rm -rf "$base"
    mv "$base.new" "$base"
    touch "$base/.stima-fresh-ok"
fi
t_base=$(( $(date +%s) - t0 ))

scratch=$(mktemp -d "$cache/run.XXXXXX")
mkdir -p "$scratch/upper" "$scratch/work" "$scratch/root"
cleanup() {
    umount -R "$scratch/root" 2>/dev/null || umount -lR "$scratch/root" 2>/dev/null || true
    if [ "${FRESH_KEEP:-0}" = 1 ]; then say "kept $scratch"; else rm -rf "$scratch"; fi
}
trap cleanup EXIT
mount -t overlay overlay -o "lowerdir=$base,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
root="$scratch/root"

# The host's way to the registries (DNS, a CA bundle if the network re-signs TLS, pip's setting
# for it) and a policy-rc.d as in container images: packages installed inside do not start services.
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$root/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/host-ca.crt"
    printf '[global]\ncert = /etc/ssl/certs/host-ca.crt\n' >"$root/etc/pip.conf"
fi
# debootstrap writes no /etc/hosts; every installed system and container has one (localhost)
[ -e "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

git clone --quiet --no-hardlinks "$repo" "$root/src/stima"
git -C "$root/src/stima" checkout --quiet --detach "$sha"
rm -rf "$root/src/stima/.venv" "$root/src/stima/.run"

log="$cache/fresh-check-${sha:0:12}.log"
inner=$(cat <<'EOF'
set -uo pipefail
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=1777 tmpfs /tmp
cd /src/stima
export HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
start=$(date +%s)
make test PYTEST_ARGS="$PYTEST_ARGS" < /dev/null; test_rc=$?
test_s=$(( $(date +%s) - start ))
start=$(date +%s)
make demo DEMO_ARGS="$DEMO_ARGS" < /dev/null; demo_rc=$?
demo_s=$(( $(date +%s) - start ))
echo "FRESH-RESULT test_rc=$test_rc test_s=$test_s demo_rc=$demo_rc demo_s=$demo_s"
EOF
)

say "running make test and make demo in a fresh root (commit ${sha:0:12}; log: $log)"
t1=$(date +%s)
# --bind the devices first (socat needs /dev/ptmx and /dev/pts), then enter new PID and mount
# namespaces: every process started inside ends with the check.
mount --rbind /dev "$root/dev"
mount --make-rslave "$root/dev"
set +e
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTEST_ARGS="${PYTEST_ARGS:-}" DEMO_ARGS="$demo_args" CI=true \
    timeout --kill-after=60 "${FRESH_TIMEOUT_S:-2400}" \
    unshare --pid --fork --mount --propagation private \
    chroot "$root" /bin/bash -c "$inner" </dev/null >"$log" 2>&1
set -e
t_run=$(( $(date +%s) - t1 ))

result=$(grep '^FRESH-RESULT' "$log" | tail -1 || true)
tail -n 25 "$log" | grep -v '^FRESH-RESULT' >&2 || true
if [ -z "$result" ]; then
    say "FAILED: the run inside the root did not finish (see $log)"
    exit 1
fi
eval "${result#FRESH-RESULT }"
summary=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$log" | tail -1 || true)
if [ "$test_rc" -ne 0 ]; then
    sed -n '/short test summary info/,/^[0-9]* \(passed\|failed\)/p' "$log" >&2 || true
fi
# pytest's closing line of the run inside, alone on its line (CI reads it)
[ -n "$summary" ] && echo "$summary"
say "base root: ${t_base} s (0 when cached); inside: ${t_run} s — make test ${test_s} s (exit $test_rc: ${summary:-no summary}), make demo ${demo_s} s (exit $demo_rc)"
if [ "$test_rc" -ne 0 ] || [ "$demo_rc" -ne 0 ]; then
    say "FAILED (log: $log)"
    exit 1
fi
say "passed: commit ${sha:0:12} builds, passes its tests and runs its demo on a fresh minimal Debian 12"
