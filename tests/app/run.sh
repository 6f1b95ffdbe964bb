#!/usr/bin/env bash
# The official Jitsi Meet web app through meetd (tests/app/*.test.mjs): meetd serves the unmodified
# app from ../shared/clients with --web-root, headless Chromium drives it as people do. Runs in a
# fresh loopback-only network namespace (Chromium sends ICE checks from every interface it has);
# must run as root.
#
#   tests/app/run.sh                       # every file; flows.test.mjs twice (P2P and bridge only)
#   tests/app/run.sh app/flows.test.mjs    # some files
#   APP_P2P=0 tests/app/run.sh app/flows.test.mjs
#   APP_EXCLUDE="app/nine.test.mjs" tests/app/run.sh   # every file but these
# Logs: tests/.logs/app-*.log (meetd), the failing test's page log in its error.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT/tests"
export MEETD_BIN="${MEETD_BIN:-$ROOT/target/debug/meetd}"
CLIENTS="${JITSI_CLIENTS_DIR:-$ROOT/../shared/clients}"
# A clone elsewhere on a machine of this workplace: the shared folder sits at /work/shared.
[[ -f "$CLIENTS/jitsi-meet-web.tar.xz" || -n "${JITSI_CLIENTS_DIR:-}" ]] || CLIENTS=/work/shared/clients

if [[ ! -f "$CLIENTS/jitsi-meet-web.tar.xz" ]]; then
    echo "SKIPPED: the official web app is not at $CLIENTS/jitsi-meet-web.tar.xz (set JITSI_CLIENTS_DIR; CI has it)"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "tests/app/run.sh must run as root (it creates a network namespace with unshare -n)" >&2
    exit 2
fi
if [[ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]]; then
    echo "Chromium not found at ${CHROMIUM_PATH:-/usr/bin/chromium} (apt-get install chromium)" >&2
    exit 2
fi
if [[ ! -x "$MEETD_BIN" ]]; then
    echo "meetd binary not found at $MEETD_BIN (cargo build, or set MEETD_BIN)" >&2
    exit 2
fi
[[ -d node_modules ]] || npm ci --no-audit --no-fund
export JITSI_CLIENTS_DIR="$CLIENTS"

if [[ $# -gt 0 ]]; then
    export APP_RUNS="$*"
else
    # file[:ENV=value] — flows once with the app's default (P2P for two) and once bridge-only.
    # APP_EXCLUDE: files left out (tests/run runs the heaviest in a section of their own).
    runs=""
    for f in app/*.test.mjs; do
        case " ${APP_EXCLUDE:-} " in *" $f "*) ;; *) runs="$runs $f" ;; esac
    done
    export APP_RUNS="$runs app/flows.test.mjs:APP_P2P=0"
fi
exec timeout "${APP_TIMEOUT:-2400}" unshare -n sh -c '
    ip link set lo up || exit 1
    rc=0
    for run in $APP_RUNS; do
        file=${run%%:*}
        envs=
        [ "$file" != "$run" ] && envs=${run#*:}
        echo "# ---- app: $file $envs"
        env $envs node --test --test-reporter=spec --test-concurrency=1 "$file" || rc=1
    done
    exit $rc'
