#!/usr/bin/env bash
# Fill bench/.gpu/ (ignored by git) on a machine WITH network, for bench/gpu.sh on a GPU machine without:
#   bench/.gpu/whl         wheels our training path may lack there (small, pure Python)
#   bench/.gpu/trl-common.tar.gz  datasets and its dependencies (cp312 manylinux x86_64, unpacked and
#                          trimmed to fit the carry limit), for both TRLs
#   bench/.gpu/trl-1.16    trl==1.16.0  (RewardTrainer)        } separate: they cannot share
#   bench/.gpu/trl-0.29    trl==0.29.1  (experimental PPO)     } one site folder
#   bench/.gpu/tokenizer   the SmolLM2 tokenizer files (from the packaged GGUF)
#   bench/.gpu/deepspeed   deepspeed==0.19.8 (a wheel built here) and its dependencies, for the ZeRO rows
# The model weights are NOT here (517 MB in fp32): bench/gpu.sh reads them from $ALIGNLOOP_GPU_MODEL.
#   bash bench/gpu_prepare.sh            # then: du -sh bench/.gpu (printed at the end)
#   SKIP_TRL=1 bash bench/gpu_prepare.sh # ours only (a few hundred KiB); SKIP_DEEPSPEED=1: no ZeRO rows
set -eu
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
GPU="$HERE/.gpu"
PY="${PYTHON:-python3}"
mkdir -p "$GPU/whl" "$GPU/trl-common" "$GPU/trl-1.16" "$GPU/trl-0.29"
get() {  # get DIR NAME==VERSION...: binary wheels for CPython 3.12 on manylinux x86_64 (pure Python ones too)
  local dir="$1"; shift
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dir" "$@"
}
# Ours: everything else our SFT/RM/PPO path imports is on the GPU machine (torch, transformers,
# accelerate, peft, safetensors, tokenizers, numpy, pyyaml, jinja2); these two are imported lazily.
get "$GPU/whl" filelock==3.20.0 platformdirs==4.5.0
if [ "${SKIP_TRL:-0}" != "1" ]; then
  get "$GPU/trl-1.16" trl==1.16.0
  get "$GPU/trl-0.29" trl==0.29.1
  # datasets and what it imports that the GPU machine lacks (numpy, tqdm, pyyaml, fsspec's own
  # dependencies, huggingface_hub and packaging are there; these fill the gaps)
  get "$GPU/trl-common" datasets==4.4.1 pyarrow==22.0.0 pandas==2.3.3 dill==0.4.0 multiprocess==0.70.18 \
    xxhash==3.6.0 fsspec==2025.10.0 pytz==2025.2 tzdata==2025.2 requests==2.32.5 urllib3==2.5.0 idna==3.11 \
    charset_normalizer==3.4.4 certifi==2025.10.5
  # 60 MB of wheels is over the carry limit: unpack them (a wheel installed with --target is its
  # unzipped content), drop what `import datasets` never loads (test suites, C headers, Arrow
  # Flight/Substrait), and pack the rest as one tar.gz that bench/gpu.sh unpacks.
  "$PY" - "$GPU/trl-common" <<'PYEOF'
import shutil, sys, tarfile, zipfile
from pathlib import Path
src = Path(sys.argv[1]); site = src.parent / "trl-common-site"
shutil.rmtree(site, ignore_errors=True)
for whl in sorted(src.glob("*.whl")):
    zipfile.ZipFile(whl).extractall(site)
for junk in ("pyarrow/tests", "pyarrow/include", "pandas/tests", "pyarrow/src"):
    shutil.rmtree(site / junk, ignore_errors=True)
for f in site.glob("pyarrow/*"):
    if any(k in f.name for k in ("flight", "substrait")) or f.suffix in (".pyx", ".pxd", ".pxi"):
        f.unlink() if f.is_file() else shutil.rmtree(f)
with tarfile.open(src.parent / "trl-common.tar.gz", "w:gz", compresslevel=6) as tar:
    tar.add(site, arcname=".")
shutil.rmtree(site)
for whl in src.glob("*.whl"):
    whl.unlink()
print("trl-common.tar.gz:", round((src.parent / "trl-common.tar.gz").stat().st_size / 2**20, 1), "MiB")
PYEOF
fi
# DeepSpeed for the ZeRO-2/ZeRO-3 SFT rows (skipped there when it does not import). PyPI has only its
# source archive: pip builds the pure-Python wheel here (no op is compiled: the rows use torch's AdamW).
# Its dependencies the GPU machine may lack come as wheels (pydantic's when the machine has none).
if [ "${SKIP_DEEPSPEED:-0}" != "1" ]; then
  mkdir -p "$GPU/deepspeed"
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --disable-pip-version-check -w "$GPU/deepspeed" deepspeed==0.19.8
  get "$GPU/deepspeed" hjson==3.1.0 py-cpuinfo==9.0.0 einops==0.8.2 msgpack==1.2.4 ninja==1.13.2 psutil==7.2.2 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
fi
# The SmolLM2 tokenizer (our registry converts it from the packaged GGUF once; copied as plain files).
PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$GPU/tokenizer" <<'PYEOF'
import shutil, sys
from pathlib import Path
from alignloop.models.registry import _ensure_smollm2_tokenizer
src, dst = _ensure_smollm2_tokenizer(), Path(sys.argv[1])
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.is_file():
        shutil.copy2(f, dst / f.name)
print("tokenizer:", dst)
PYEOF
du -sh "$GPU"/* | sed 's/^/  /'
echo "bench/.gpu in all: $(du -sh "$GPU" | cut -f1) (carry limit about 60 MiB)"
