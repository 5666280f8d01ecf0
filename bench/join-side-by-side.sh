#!/bin/bash
# Side by side: the relay before (90ecd4a) and after the control-plane change, alternating.
set -u
out=/tmp/benchjoin/results.txt; : > $out
for run in 1 2 3; do
  for which in before after; do
    if [ $which = before ]; then dir=/work/before/target/release; else dir=/work/main/target/release; fi
    $dir/blindrelay --config /tmp/benchjoin/idle.toml >/dev/null 2>&1 & pid=$!
    for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/17400) 2>/dev/null && break; sleep 0.1; done
    r=$(/work/main/target/release/blindrelay-bench load --relay ws://127.0.0.1:17400/v1/signal --calls 200 \
      --video-kbps 0 --no-audio --duration 6s --join-rate 100 --relay-pid $pid --json 2>/dev/null)
    echo "$which run$run $r" >> $out
    kill $pid; wait $pid 2>/dev/null
  done
done
