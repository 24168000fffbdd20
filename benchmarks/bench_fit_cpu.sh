#!/usr/bin/env bash
# The whole CPU recipe, timed end to end as a user runs it (process start to exit).
#   bash benchmarks/bench_fit_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
start=$(date +%s.%N)
lit-nanogpt fit --config configs/shakespeare_char_cpu.yaml --trainer.default_root_dir "$out" \
  --trainer.enable_progress_bar false "$@" 2>&1 | grep -E "Best checkpoint|Error|error" || true
end=$(date +%s.%N)
echo "wall time: $(echo "$end - $start" | bc) s"
