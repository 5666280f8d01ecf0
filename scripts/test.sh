#!/usr/bin/env bash
# README's test command: install what the tests need that cargo does not (headless
# Chromium + playwright-core, aiortc, GStreamer webrtcbin, tshark, promtool), then run the
# whole test suite. .ci/run calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo test --workspace "$@"
