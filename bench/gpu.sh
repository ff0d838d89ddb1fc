#!/usr/bin/env bash
# alignloop GPU benchmark: SFT, RM and PPO on SmolLM2-135M in bf16 (autocast, fp32 master weights),
# ours and, when their wheels were carried, TRL 1.16 RewardTrainer and TRL 0.29.1 PPO side by side,
# plus SFT's work under DeepSpeed ZeRO-2 and ZeRO-3 through Accelerate when deepspeed imports.
# Prints tokens/s, pairs/s, episodes/s and peak GPU memory as one table (bench/gpu.py says what each
# part runs and why the two sides do the same work).
#
# Offline by design: it uses only what the checkout carries.
#   * the model: env ALIGNLOOP_GPU_MODEL = a plain Hugging Face folder of SmolLM2-135M(-Instruct)
#     (converted beforehand; its tokenizer files are taken from bench/.gpu/tokenizer when missing);
#   * wheels that bench/gpu_prepare.sh downloaded on a networked machine into bench/.gpu/ (ignored by
#     git): bench/.gpu/whl (anything our path lacks), bench/.gpu/trl-common.tar.gz (datasets and its deps),
#     bench/.gpu/trl-1.16 and bench/.gpu/trl-0.29 (the two TRLs cannot share one site folder),
#     bench/.gpu/deepspeed (deepspeed 0.19.8 and its dependencies, for the two ZeRO rows).
#     They are unpacked under /tmp and put AFTER the machine's site-packages: they only fill gaps.
# Robust: each part runs in its own process under its own `timeout`; a failing part prints its error
# and the script goes on. Everything is logged to $OUT/gpu-bench (or bench/.gpu/out) when set.
#
#   ALIGNLOOP_GPU_MODEL=/path/to/smollm2 bash bench/gpu.sh            # the real run (< 8 min on one H200)
#   ALIGNLOOP_GPU_MODEL=/path/to/tiny bash bench/gpu.sh --smoke       # CPU, a few steps: checks the script
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
GPU="$HERE/.gpu"
PY="${PYTHON:-python3}"
[ "${1:-}" = "--smoke" ] && export ALIGNLOOP_GPU_SMOKE=1
SMOKE="${ALIGNLOOP_GPU_SMOKE:-0}"
MODEL="${ALIGNLOOP_GPU_MODEL:-}"
LOG="${OUT:-$GPU/out}/gpu-bench"
mkdir -p "$LOG"
RESULTS="$LOG/results"; rm -rf "$RESULTS"; mkdir -p "$RESULTS"
WORK="$(mktemp -d /tmp/alignloop-gpu-work.XXXX)"
SITE="$(mktemp -d /tmp/alignloop-gpu-site.XXXX)"
trap 'rm -rf "$WORK" "$SITE"' EXIT
START=$(date +%s)
BUDGET="${ALIGNLOOP_GPU_BUDGET:-450}"   # seconds for all parts together (the whole script stays under 8 min)
exec > >(tee -a "$LOG/gpu.log") 2>&1
echo "== alignloop GPU bench $(date -u +%FT%TZ) smoke=$SMOKE model=${MODEL:-unset} log=$LOG"

if [ -z "$MODEL" ] || [ ! -f "$MODEL/config.json" ]; then
  echo "ALIGNLOOP_GPU_MODEL must name a Hugging Face model folder (with config.json); got '${MODEL}'"
  exit 2
fi
# The tokenizer: from the model folder, else the carried one (a folder of links, the model stays read-only).
if [ ! -f "$MODEL/tokenizer_config.json" ]; then
  if [ -f "$GPU/tokenizer/tokenizer_config.json" ]; then
    LINKED="$WORK/model"; mkdir -p "$LINKED"
    for f in "$MODEL"/*; do ln -s "$f" "$LINKED/"; done
    for f in "$GPU/tokenizer"/*; do ln -sf "$f" "$LINKED/"; done
    MODEL="$LINKED"; echo "tokenizer files from $GPU/tokenizer"
  else
    echo "warning: $MODEL has no tokenizer and bench/.gpu/tokenizer is missing (run bench/gpu_prepare.sh)"
  fi
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1 ALIGNLOOP_NO_PROGRESS=1 ACCELERATE_DISABLE_RICH=1 PYTHONUNBUFFERED=1
export ALIGNLOOP_CACHE="$WORK/cache"
[ "$SMOKE" = "1" ] && export CUDA_VISIBLE_DEVICES=""
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

unpack() {  # unpack() NAME DIR...: each wheel of the DIRs into $SITE/NAME, one by one (a bad one is skipped)
  local name="$1"; shift; local dest="$SITE/$name"; mkdir -p "$dest"
  for dir in "$@"; do
    for whl in "$dir"/*.whl; do
      [ -e "$whl" ] || continue
      "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$dest" "$whl" >/dev/null 2>&1 \
        || echo "  (skipped $(basename "$whl"): not installable here)"
    done
  done
  echo "$dest"
}
BASE_SITE="$(unpack base "$GPU/whl" | tail -1)"
"$PY" - <<PYEOF
import importlib, sys
sys.path.append("$BASE_SITE")
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
for m in ("transformers", "accelerate", "peft", "safetensors", "yaml", "datasets", "trl"):
    try:
        print(f"  {m} {getattr(importlib.import_module(m), '__version__', '?')}")
    except Exception as e:
        print(f"  {m}: not importable ({type(e).__name__})")
PYEOF

part() {  # part() NAME SECONDS [SITE...]: one part in its own process under timeout
  local name="$1" limit="$2"; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  [ "$limit" -gt "$left" ] && limit="$left"
  if [ "$limit" -lt 20 ]; then
    echo "-- $name: skipped, ${left}s left of the ${BUDGET}s budget" | tee "$RESULTS/$name.error"; return
  fi
  local extra=(--append-path "$BASE_SITE")
  for s in "$@"; do extra+=(--append-path "$s"); done
  echo "-- $name (timeout ${limit}s)"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$PY" "$HERE/gpu.py" --part "$name" --model "$MODEL" --work "$WORK" \
      --result "$RESULTS/$name.json" "${extra[@]}" > "$LOG/$name.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    [ $rc -eq 124 ] && echo "timed out after ${limit}s" > "$RESULTS/$name.error"
    [ -f "$RESULTS/$name.error" ] || echo "exit $rc" > "$RESULTS/$name.error"
    echo "   FAILED (rc=$rc, $(( $(date +%s) - t0 ))s): $(tail -c 300 "$RESULTS/$name.error")"
    echo "   last lines of $LOG/$name.log:"; tail -n 15 "$LOG/$name.log" | sed 's/^/     /'
  else
    echo "   done in $(( $(date +%s) - t0 ))s"
  fi
}

if [ "$SMOKE" = "1" ]; then T_SFT=300; T_RM=300; T_PPO=400; T_TRL=400; BUDGET=100000; else
  T_SFT=75; T_RM=75; T_PPO=100; T_TRL=90; fi
part ours-sft $T_SFT
part ours-rm $T_RM
part ours-ppo $T_PPO
COMMON=""
if [ -f "$GPU/trl-common.tar.gz" ]; then
  COMMON="$SITE/trlcommon"; mkdir -p "$COMMON"; tar -xzf "$GPU/trl-common.tar.gz" -C "$COMMON" || echo "  trl-common.tar.gz did not unpack"
elif ls "$GPU"/trl-common/*.whl >/dev/null 2>&1; then COMMON="$(unpack trlcommon "$GPU/trl-common" | tail -1)"; fi
if ls "$GPU"/trl-1.16/*.whl >/dev/null 2>&1; then
  part trl-rm $T_TRL "$(unpack trl116 "$GPU/trl-1.16" | tail -1)" "$COMMON"
else echo "-- trl-rm: skipped (no bench/.gpu/trl-1.16 wheels)" | tee "$RESULTS/trl-rm.error"; fi
if ls "$GPU"/trl-0.29/*.whl >/dev/null 2>&1; then
  part trl-ppo $T_TRL "$(unpack trl029 "$GPU/trl-0.29" | tail -1)" "$COMMON"
else echo "-- trl-ppo: skipped (no bench/.gpu/trl-0.29 wheels)" | tee "$RESULTS/trl-ppo.error"; fi

# DeepSpeed ZeRO-2/3 (SFT's work through Accelerate's DeepSpeedPlugin): the machine's deepspeed, else the
# carried wheels (bench/gpu_prepare.sh); skipped with the reason in the table when neither imports.
DS_SITE=""
ls "$GPU"/deepspeed/*.whl >/dev/null 2>&1 && DS_SITE="$(unpack deepspeed "$GPU/deepspeed" | tail -1)"
if PYTHONPATH="$PYTHONPATH${DS_SITE:+:$DS_SITE}" "$PY" -c "import deepspeed" >/dev/null 2>&1; then
  T_DS=60; [ "$SMOKE" = "1" ] && T_DS=300
  part ds-zero2-sft $T_DS $DS_SITE
  part ds-zero3-sft $T_DS $DS_SITE
else
  for p in ds-zero2-sft ds-zero3-sft; do
    echo "-- $p: skipped (deepspeed does not import: pip install deepspeed, or bench/gpu_prepare.sh)" \
      | tee "$RESULTS/$p.error"
  done
fi

echo
echo "== results ($(( $(date +%s) - START ))s in all; logs in $LOG)"
"$PY" "$HERE/gpu.py" --table "$RESULTS" | tee "$LOG/table.txt"
