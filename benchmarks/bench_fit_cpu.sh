#!/usr/bin/env bash
# The whole CPU recipe, timed end to end as a user runs it (process start to exit).
#   bash benchmarks/bench_fit_cpu.sh            # extra arguments go to lit-nanogpt fit
# Checkpoints and the export go to a temporary folder; W&B follows WANDB_DIR (set it to keep the
# run out of runs/).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
start=$(date +%s.%N)
lit-nanogpt fit --config configs/shakespeare_char_cpu.yaml --trainer.default_root_dir "$out" \
  --trainer.enable_progress_bar false "$@" >"$out/fit.log" 2>&1 || { tail -5 "$out/fit.log"; exit 1; }
grep -E "^Best checkpoint" "$out/fit.log"
end=$(date +%s.%N)
echo "wall time: $(echo "$end - $start" | bc) s"
