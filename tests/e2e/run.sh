#!/usr/bin/env bash
# End-to-end media test: meetd + headless Chromium in a fresh loopback-only network namespace
# (testing.md: Chromium sends ICE checks from every interface, so browser media tests never run
# in the machine's own namespace). Must run as root (unshare -n).
#
# Five passes of tests/e2e/media.test.mjs, each with its own meetd and Chromium:
#   1. vp8:  VP8 with SSRC-signalled simulcast (3 layers + RTX, lib-jitsi-meet's SdpSimulcast munging)
#   2. av1:  the focus' codec order (AV1 first), one stream, no simulcast (lib-jitsi-meet uses SVC there)
#   3. bosh: as vp8, but XMPP over BOSH (/http-bind, the mobile apps' default) instead of WebSocket
#   4. p2p:  two participants in lib-jitsi-meet's P2P mode: Jingle between them through the MUC
#            (occupant-addressed IQs), media browser ⇄ browser; meetd's media port as STUN server
#            (behind a port-translating forwarder in the test, so Chromium gathers a srflx);
#            the focus is configured with min_participants = 3 so it never invites the pair
#   5. ipv6: as vp8, but media over IPv6 only: a veth pair inside the namespace carries fd00::1 and
#            fd00::2, the bridge announces only fd00::1 (the signalling stays on 127.0.0.1)
#
#   tests/e2e/run.sh                            # all passes
#   E2E_PASSES=vp8 tests/e2e/run.sh             # one pass (vp8 | av1 | bosh | p2p | ipv6)
#   E2E_PARTICIPANTS=2 tests/e2e/run.sh         # only the pair
#   E2E_DUMP=1 tests/e2e/run.sh                 # print every participant's stats at the end
# See media.test.mjs for the other E2E_* knobs. Logs: tests/.logs/e2e-media-*.{log,json}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT/tests"
export MEETD_BIN="${MEETD_BIN:-$ROOT/target/debug/meetd}"

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/e2e/run.sh must run as root (it creates a network namespace with unshare -n)" >&2
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
if [[ ! -d node_modules ]]; then
    npm ci --no-audit --no-fund
fi

export E2E_PASSES="${E2E_PASSES:-vp8 av1 bosh p2p ipv6}"
# Inside: only `lo` (plus, for the ipv6 pass, a veth pair whose both ends stay in the namespace);
# meetd, the page server and Chromium all live there.
exec timeout "${E2E_TIMEOUT:-900}" unshare -n sh -c '
    ip link set lo up || exit 1
    rc=0
    for pass in $E2E_PASSES; do
        transport=websocket p2p=0 advertise=127.0.0.1 ifaces= shape=0 threads=1
        case "$pass" in
            vp8) codec=VP8 shape=1 ;;
            # Dual-stack bridge: IPv4 arrives as ::ffff:127.0.0.1 on the [::] socket.
            av1) codec=offer advertise=127.0.0.1,::1 ;;
            bosh) codec=VP8 transport=bosh threads=2 ;;
            p2p) codec=VP8 p2p=1 ;;
            ipv6)
                codec=VP8 advertise=fd00::1 ifaces=v0,v1
                if ! ip link show v0 >/dev/null 2>&1; then
                    ip link add v0 type veth peer name v1 || exit 1
                    ip link set v0 up && ip link set v1 up || exit 1
                    ip -6 addr add fd00::1/64 dev v0 nodad || exit 1
                    ip -6 addr add fd00::2/64 dev v1 nodad || exit 1
                fi ;;
            *) echo "unknown pass $pass" >&2; exit 2 ;;
        esac
        echo "# ---- e2e media pass: $pass (E2E_CODEC=$codec E2E_TRANSPORT=$transport E2E_P2P=$p2p)"
        E2E_CODEC="${E2E_CODEC:-$codec}" E2E_TRANSPORT="$transport" E2E_P2P="$p2p" \
            E2E_ADVERTISE="${E2E_ADVERTISE:-$advertise}" E2E_NETNS_IFACES="$ifaces" E2E_SHAPE="$shape" E2E_MEDIA_THREADS="$threads" \
            node --test --test-reporter=spec --test-concurrency=1 e2e/media.test.mjs || rc=1
    done
    exit $rc'
