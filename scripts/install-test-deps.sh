#!/usr/bin/env bash
# Install what the interop tests (tests/tests/interop.rs) and the other external-tool tests
# need: headless Chromium + playwright-core, aiortc, GStreamer webrtcbin, tshark, prometheus,
# redis-server (the cluster's directory).
#
# Idempotent and non-interactive: every step checks first and installs only what is
# missing, so running it twice is cheap. Meant for CI (root, fresh Debian 12) and for
# developers (root or sudo-less root container).
#
# Which Python runs the Python peers: the venv at $BLINDRELAY_VENV (default
# /opt/blindrelay-venv), made from Debian's /usr/bin/python3 with --system-site-packages
# so Debian's python3-gi / python3-gst-1.0 (webrtcbin peer) are importable next to
# aiortc from PyPI. Debian's Python is "externally managed" (PEP 668), hence the venv
# rather than pip --break-system-packages. The interop test looks for
# $BLINDRELAY_PEER_PYTHON first, then /opt/blindrelay-venv/bin/python; nothing is
# exported globally.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

export DEBIAN_FRONTEND=noninteractive
VENV=${BLINDRELAY_VENV:-/opt/blindrelay-venv}
AIORTC_VERSION=${AIORTC_VERSION:-1.16.0}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

log() { echo "[install-test-deps] $*" >&2; }

# --- Debian packages ------------------------------------------------------------------
APT_PKGS=(
    chromium chromium-driver
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    gstreamer1.0-nice gstreamer1.0-tools
    python3-gst-1.0 python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
    gir1.2-gst-plugins-bad-1.0
    python3-venv
    tshark prometheus
    redis-server
    janus
)
# Node.js: the machine image may already carry Node 20 (with its own npm) from another
# source; Debian's nodejs/npm packages would conflict with it, so only install them when
# there is no node/npm at all.
if ! command -v node >/dev/null 2>&1; then APT_PKGS+=(nodejs); fi
if ! command -v npm >/dev/null 2>&1; then APT_PKGS+=(npm); fi

missing=()
for p in "${APT_PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    log "apt: installing ${missing[*]}"
    $SUDO apt-get update -q
    # tshark asks whether non-root users may capture; answer no without a prompt.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "apt: all present"
fi

# playwright-core 1.65 needs Node >= 20. The machine image ships Node 20; Debian 12's own
# nodejs is 18, so a machine without the image's Node cannot run the Chromium peer.
node_major=$(node --version | sed -E 's/^v([0-9]+).*/\1/')
if [ "$node_major" -lt 20 ]; then
    log "node $(node --version) is too old for playwright-core 1.65 (needs >= 20)"
    exit 1
fi

# --- Python venv with aiortc (and Debian's gi visible) ---------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "venv: creating $VENV"
    $SUDO /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python" -c "import aiortc, sys; sys.exit(aiortc.__version__ != '$AIORTC_VERSION')" 2>/dev/null; then
    log "pip: installing aiortc==$AIORTC_VERSION into $VENV"
    $SUDO "$VENV/bin/python" -m pip install -q --disable-pip-version-check "aiortc==$AIORTC_VERSION"
else
    log "pip: aiortc $AIORTC_VERSION present"
fi
"$VENV/bin/python" -c "
import aiortc, av
import gi
gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); gi.require_version('GstSdp', '1.0')
from gi.repository import Gst, GstWebRTC, GstSdp
Gst.init(None)
for e in ('webrtcbin', 'vp8enc', 'vp8dec', 'opusenc', 'opusdec', 'rtpvp8pay', 'rtpopuspay', 'nicesrc'):
    assert Gst.ElementFactory.find(e), 'GStreamer element missing: ' + e
print('python peers ready: aiortc', aiortc.__version__, 'av', av.__version__, 'gst', Gst.version_string())
" >&2

# --- playwright-core for the Chromium peer -------------------------------------------
CHROMIUM_PEER="$ROOT/tests/peers/chromium"
if [ ! -f "$CHROMIUM_PEER/node_modules/playwright-core/package.json" ] ||
    ! cmp -s "$CHROMIUM_PEER/package-lock.json" "$CHROMIUM_PEER/node_modules/.package-lock.json.installed" 2>/dev/null; then
    log "npm: installing $CHROMIUM_PEER"
    (
        cd "$CHROMIUM_PEER"
        export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
        if [ -f package-lock.json ]; then
            npm ci --no-audit --no-fund --loglevel=error
        else
            npm install --no-audit --no-fund --loglevel=error
        fi
        cp package-lock.json node_modules/.package-lock.json.installed
    )
else
    log "npm: playwright-core present"
fi

log "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo missing)"
log "done"
