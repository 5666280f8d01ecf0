#!/usr/bin/env bash
# CI smoke run of every fuzz target: build them once, then run each for a fixed time
# (default 10 s: SECONDS_PER_TARGET=N to change it) from its committed seed corpus. New
# corpus entries go to a temporary directory, so the committed seeds stay as they are.
# A crash fails the script; libFuzzer leaves the input in fuzz/artifacts/<target>/.
#
# Installs cargo-fuzz when it is missing (a fresh machine has an empty CARGO_HOME). Uses
# the nightly toolchain when there is one; without it, RUSTC_BOOTSTRAP=1 lets stable take
# the sanitizer flags.
set -euo pipefail
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

per_target="${SECONDS_PER_TARGET:-10}"
if rustup run nightly rustc --version >/dev/null 2>&1; then
  fuzz() { cargo +nightly fuzz "$@"; }
else
  echo "no nightly toolchain: building with RUSTC_BOOTSTRAP=1 on stable"
  export RUSTC_BOOTSTRAP=1
  fuzz() { cargo fuzz "$@"; }
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

started=$(date +%s)
fuzz build
built=$(date +%s)
echo "== built every target in $((built - started)) s"
for target in $(fuzz list); do
  mkdir -p "$work/$target"
  log="$work/$target.log"
  if ! fuzz run "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$per_target" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 80 "$log"
    echo "== $target: FAILED (the input is in fuzz/artifacts/$target/)"
    exit 1
  fi
  echo "== $target: $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') executions in ${per_target} s"
done
echo "== all targets ran $per_target s each without a crash; total $(( $(date +%s) - started )) s"
