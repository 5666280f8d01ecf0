#!/usr/bin/env bash
# README's test command: install what the tests need that cargo does not (headless
# Chromium + playwright-core, aiortc, GStreamer webrtcbin, tshark, promtool, redis-server), then run the
# whole test suite. .ci/run calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
# The alert rules parse and their unit tests pass (tests/tests/ops.rs checks that every
# metric they and the Grafana dashboard query exists on a live relay).
promtool check rules config/prometheus-rules.yml
promtool test rules config/prometheus-rules.test.yml
cargo test --workspace "$@"
