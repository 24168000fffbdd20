#!/usr/bin/env bash
# The GPU check: one command for one H100 or H200 with no network, in under 7 minutes (BENCHMARKS.md, "GPU
# check"). Four stages, each with its own time budget, each writing its figures into gpu_check.json as it ends
# (so a run cut off still reports what finished), a failed stage recorded with its exit code and output tail:
#   1. vs_nanogpt: nanoGPT's own train.py with its GPU recipe (bf16, compile) and `lit-nanogpt fit --config
#      configs/shakespeare_char.yaml` on the same card, both cut to 1000 of their 5000 steps: wall time and best
#      full-validation loss of each (nanoGPT's checkpoint imported and validated by lit-nanogpt);
#   2. fast: configs/shakespeare_char_fast.yaml as shipped (goal: best val loss <= 1.47 within 2000 steps);
#   3. fp16: 300 steps of configs/shakespeare_char_npu.yaml on CUDA through NPUPrecision, the NPU's plugin;
#   4. export_generate: `lit-nanogpt export`, `generate --checkpoint --device cuda`, `generate --onnx` on 2's model.
#
#   bash benchmarks/gpu_check.sh --prepare [--with-onnx]  # here, with a package index: fills .gpu_check/
#   bash benchmarks/gpu_check.sh [--out DIR] [--work DIR] [-- STAGE OPTIONS]   # on the GPU machine
#   bash benchmarks/gpu_check.sh --smoke [--out DIR]      # anywhere: every stage on the CPU, tiny (about a minute)
#   bash benchmarks/gpu_check.sh --smoke --install        # the same after the GPU machine's set-up from .gpu_check/
#
# The GPU machine needs python3 with torch (and, for stage 4, onnx and onnxruntime) and nothing else: --prepare
# puts nanoGPT's code with its shakespeare_char data prepared by its own prepare.py, and wheels of the pure-Python
# packages the project needs (Lightning, jsonargparse, torchmetrics, ..., at this environment's versions; PyYAML
# installed only where missing; onnx and onnxruntime with --with-onnx), into the git-ignored .gpu_check/, which
# must travel with the checkout (this workplace's device tool: carry [".gpu_check"]). W&B is off; nothing is
# downloaded there. Output: gpu_check.json and gpu_check.log in --out (default $OUT when set, else
# runs/gpu_check); run folders, checkpoints and exports in --work (default a new folder in ${TMPDIR:-/tmp}).
# STAGE OPTIONS: --vs-steps N, --fast-steps N, --fp16-steps N, --deadline S, --stages a,b (gpu_check.py --help).
# Environment: PYTHON (default python3), NANOGPT_REF (nanoGPT's code, default ../shared/reference/nanogpt),
# GPU_PYTHON_VERSION (the wheels' Python for --prepare, default 3.12: the GPU machine's).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREP="$ROOT/.gpu_check"
PY="${PYTHON:-python3}"
REF="${NANOGPT_REF:-$ROOT/../shared/reference/nanogpt}"
# What the GPU machine may lack, shipped at this environment's versions (--no-deps: each one named).
PURE=(lightning lightning-utilities torchmetrics jsonargparse docstring-parser typeshed-client)
BINARY=(PyYAML)  # compiled: installed there only when `import yaml` fails
ONNX=(onnx onnxruntime)  # about 35 MB together: only with --with-onnx

mode=gpu out="" work="" with_onnx=0 install=0
rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) mode=prepare ;;
    --smoke) mode=smoke ;;
    --with-onnx) with_onnx=1 ;;
    --install) install=1 ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    --work) work="${2:?--work needs a folder}"; shift ;;
    --) shift; rest=("$@"); break ;;
    -h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

prepare_nanogpt() {  # DEST: a copy of nanoGPT's code with data/shakespeare_char/{train.bin,val.bin,meta.pkl}
  local dest="$1"
  [ -f "$REF/train.py" ] || { echo "gpu_check.sh: nanoGPT's code is not at $REF: set NANOGPT_REF" >&2; return 1; }
  rm -rf "$dest" && mkdir -p "$(dirname "$dest")" && cp -r "$REF" "$dest" && chmod -R u+w "$dest" || return 1
  cp "$ROOT/lit_nanogpt/assets/tinyshakespeare.txt" "$dest/data/shakespeare_char/input.txt" || return 1
  # prepare.py downloads only when input.txt is missing; a stand-in `requests` so that nothing else is needed.
  mkdir -p "$dest/_shim" && printf 'def get(*a, **k):\n    raise RuntimeError("offline")\n' >"$dest/_shim/requests.py"
  (cd "$dest" && PYTHONPATH="$dest/_shim" "$PY" data/shakespeare_char/prepare.py) || return 1
  rm -rf "$dest/_shim" "$dest/data/shakespeare_char/input.txt"
}

pins() {  # NAME...: NAME==VERSION as installed in this environment
  "$PY" -c 'import sys, importlib.metadata as m; print(*(f"{d}=={m.version(d)}" for d in sys.argv[1:]))' "$@"
}

prepare() {
  local wheels="$PREP/wheels" version="${GPU_PYTHON_VERSION:-3.12}" names
  local platform=(--only-binary=:all: --python-version "$version" --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  rm -rf "$PREP" && mkdir -p "$wheels/pure" "$wheels/binary" || return 1
  prepare_nanogpt "$PREP/nanogpt" || return 1
  for group in pure binary onnx; do
    case "$group" in
      pure) names=("${PURE[@]}") ;;
      binary) names=("${BINARY[@]}") ;;
      onnx) [ "$with_onnx" = 1 ] || continue; names=("${ONNX[@]}") ;;
    esac
    # shellcheck disable=SC2046  # one argument per pin
    "$PY" -m pip download -q --no-deps "${platform[@]}" -d "$wheels/$group" $(pins "${names[@]}") || return 1
  done
  du -sh "$PREP"/nanogpt "$wheels"/* && du -sh "$PREP"
  echo "gpu_check.sh: prepared $PREP (git-ignored; carry it with the checkout to the GPU machine)"
}

setup() {  # on the GPU machine: what --prepare shipped, and this checkout, on PYTHONPATH through $work/site
  local site="$work/site" ok=1
  mkdir -p "$site"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  local pip_install=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site")
  if compgen -G "$PREP/wheels/pure/*.whl" >/dev/null; then
    echo "installing: $(cd "$PREP/wheels/pure" && echo *.whl)"
    "${pip_install[@]}" "$PREP"/wheels/pure/*.whl || ok=0
  else
    echo "no wheels in $PREP/wheels/pure (run --prepare here first): using what this python has"
  fi
  if ! "$PY" -c 'import yaml' 2>/dev/null && compgen -G "$PREP/wheels/binary/*.whl" >/dev/null; then
    echo "installing: $(cd "$PREP/wheels/binary" && echo *.whl)"
    "${pip_install[@]}" "$PREP"/wheels/binary/*.whl || ok=0
  fi
  if compgen -G "$PREP/wheels/onnx/*.whl" >/dev/null; then
    echo "installing: $(cd "$PREP/wheels/onnx" && echo *.whl)"
    "${pip_install[@]}" "$PREP"/wheels/onnx/*.whl || ok=0
  fi
  # This checkout, laid out as pyproject.toml installs it (callbacks/ as lit_nanogpt.callbacks), unless this
  # python already imports it from here (an editable install): a copy needs no build backend, which pip would.
  # Python is asked from $work: in the checkout, its own lit_nanogpt/ (no callbacks inside) would answer.
  local found
  found=$(cd "$work" && "$PY" -c 'import lit_nanogpt.callbacks as c; print(c.__file__)' 2>/dev/null)
  if [ "${found#"$ROOT/"}" = "$found" ]; then
    echo "copying this checkout's lit_nanogpt into $site"
    rm -rf "$site/lit_nanogpt" && cp -r "$ROOT/lit_nanogpt" "$site/" && rm -rf "$site/lit_nanogpt/callbacks" &&
      cp -r "$ROOT/callbacks" "$site/lit_nanogpt/callbacks" || ok=0
  fi
  (cd "$work" && "$PY" -c 'import lightning, jsonargparse, torchmetrics, lit_nanogpt.cli') || ok=0
  [ "$ok" = 1 ]
}

if [ "$mode" = prepare ]; then
  prepare
  exit $?
fi

out="${out:-${OUT:-$ROOT/runs/gpu_check}}"
work="${work:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$out" "$work" || exit 1
log="$out/gpu_check.log"
: >"$log"
echo "gpu_check.sh: $mode run; figures in $out/gpu_check.json, output of every command in $log, work in $work"

start=$SECONDS
if [ "$mode" = smoke ] && [ "$install" = 0 ]; then
  echo "smoke: the current environment as it is" >>"$log"
  setup_rc=0
else
  setup >>"$log" 2>&1
  setup_rc=$?
fi
nanogpt=""
if [ -f "$PREP/nanogpt/data/shakespeare_char/train.bin" ]; then
  nanogpt="$PREP/nanogpt"
elif prepare_nanogpt "$work/nanogpt" >>"$log" 2>&1; then
  nanogpt="$work/nanogpt"
fi
"$PY" -c 'import json, sys; rc, s, nano, tail = sys.argv[2:]
json.dump({"rc": int(rc), "seconds": int(s), "nanogpt": nano or None, "log_tail": tail[-1500:] if rc != "0" else None},
          open(sys.argv[1], "w"))' "$work/setup.json" "$setup_rc" "$((SECONDS - start))" "$nanogpt" "$(tail -c 1500 "$log")"

args=(--out "$out" --work "$work" --setup "$work/setup.json")
[ -n "$nanogpt" ] && args+=(--nanogpt "$nanogpt")
[ "$mode" = smoke ] && args+=(--smoke)
"$PY" "$ROOT/benchmarks/gpu_check.py" "${args[@]}" ${rest[@]+"${rest[@]}"}
rc=$?
echo "gpu_check.sh: done in $((SECONDS - start)) s (exit $rc); figures in $out/gpu_check.json"
exit $rc
