"""Bench: our K-way DPO (all C(K,2) pairs of a prompt as one element) vs TRL 1.16 DPOTrainer on the pairs.

Run: ``.venv/bin/python bench/dpo.py [--ks 4,9] [--layers 4] [--threads 1]``

For each K, one file of simulated-panel rankings (made-up candidates of varying gold utility, the
data of ``bench/reward_model.py``) is written once and both trainers read it:

* TRL 1.16 ``DPOTrainer``, fed the expanded pairs as rows (``to_trl_preference``: every ranking
  becomes its C(K,2) prompt/chosen/rejected rows, ties dropped), the prompt formatted with the
  same chat template, one epoch, 8 pairs per step, TRL's defaults otherwise (reference model held
  in memory and run every step, gradient checkpointing on; ``--trl-precompute-ref 1`` and
  ``--trl-gradient-checkpointing 0`` change them). It runs in its own venv ``bench/.venv-trl``
  (created on first use, see ``bench/reward_model.py``).
* ours: :func:`alignloop.train.dpo.train_dpo`, each prompt's K completions one batch element
  (``--prompts-per-step`` prompts per step, one forward per prompt), one epoch, the reference
  log-probs computed once before the first step.

The model: SmolLM2-135M-Instruct (packaged), by default cut to its first ``--layers 4`` of 30
decoder layers (about 42M parameters, 28M of them the tied embedding: MiniLM-size), because the
full model makes TRL's K = 9 epoch take most of an hour on this loaded 2-core machine;
``--layers 0`` runs the full model. Both use the same beta, max_length, fp32, cosine decay without
warm-up, max_grad_norm 1, and ``--threads`` torch threads. Learning rates: TRL ``--lr`` 1e-5; ours
``--ours-lr`` 1e-4, chosen on the validation prompts (``--split val``: 1e-5, 3e-5, 1e-4, 3e-4 tried;
one prompt's C(K,2) pairs per step gives ours 4 steps at K = 9 where TRL's 8 pairs per step give 18).
Settings are chosen with ``--split val`` and never on the test prompts the table reports by default.

Each trainer runs in a fresh subprocess (so peak RSS is its own) and saves its policy; a third
process then measures both policies with the same code: the held-out implicit-reward accuracy
(share of the held-out rankings' untied pairs with beta*log(pi/pi_ref) higher for the better
completion), reference = the starting model. Printed: pairs learned per second of training
(TRL: ``trainer.train()`` wall time, its reference passes included; ours: the reference cache
plus the training steps), peak RSS, held-out accuracy. Targets (issue 14): >= 3x TRL's pairs/s at
K = 4, >= 6x at K = 9, no more memory, accuracy at least TRL's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reward_model import ensure_trl_venv, peak_rss_mib, write_data  # noqa: E402  (the RM bench's data and venv)

ROOT = Path(__file__).resolve().parent.parent
MAX_LENGTH = 128


def make_model(work: Path, layers: int) -> Path:
    """The packaged SmolLM2 as an HF folder, cut to its first ``layers`` decoder layers (0 = all)."""
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.models.registry import resolve

    if layers <= 0:
        return Path(resolve("smollm2-135m-instruct"))
    out = work / f"smollm2-{layers}layers"
    if (out / "config.json").exists():
        return out
    model = load_causal_lm("smollm2-135m-instruct")
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    model.save_pretrained(str(out))
    load_tokenizer("smollm2-135m-instruct").save_pretrained(str(out))
    return out


def split_data(work: Path, k: int, n_train: int, n_val: int, n_held: int) -> tuple[Path, Path, Path]:
    """(train, test, validation) rankings files of disjoint prompts: settings are chosen on the
    validation prompts (``--split val``), the table is measured on the test prompts."""
    from alignloop.data.jsonl import read_jsonl, write_jsonl
    from alignloop.data.records import Ranking

    both, held = write_data(work, k, n_train + n_val, n_held)
    rows = read_jsonl(both, Ranking)
    train, val = work / f"train-k{k}.jsonl", work / f"val-k{k}.jsonl"
    write_jsonl(train, rows[:n_train])
    write_jsonl(val, rows[n_train:])
    return train, held, val


# ---------------------------------------------------------------------------------------------
# The TRL side (runs inside bench/.venv-trl; imports only alignloop's pure-Python data records).


def trl_worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT / "src"))  # for the data records and the TRL export only
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from alignloop.data.export import to_trl_preference
    from alignloop.data.jsonl import read_jsonl
    from alignloop.data.records import Ranking

    if args.threads:
        torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)

    def prompt_text(p: str) -> str:  # the query our policy is trained and sampled on
        return tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)

    rows = [{**r, "prompt": prompt_text(r["prompt"])} for r in to_trl_preference(read_jsonl(args.train, Ranking))]
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-dpo-"),
        per_device_train_batch_size=int(args.trl_batch),
        num_train_epochs=1,
        learning_rate=args.lr,
        beta=args.beta,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        max_length=MAX_LENGTH,
        bf16=False,
        fp16=False,
        model_init_kwargs={"dtype": "float32"},
        save_strategy="no",
        report_to="none",
        logging_steps=1000,
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
        gradient_checkpointing=bool(args.trl_gradient_checkpointing),
        precompute_ref_log_probs=bool(args.trl_precompute_ref),
    )
    trainer = DPOTrainer(model=args.model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok)
    n_pairs = len(trainer.train_dataset)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    trainer.model.save_pretrained(args.out)
    return {
        "pairs": n_pairs,
        "train_seconds": seconds,
        "pairs_per_s": n_pairs / seconds,
        "steps": trainer.state.global_step,
        "peak_rss_mib": peak_rss_mib(),
    }


# ---------------------------------------------------------------------------------------------
# Our side, and the common evaluation.


def ours_worker(args: argparse.Namespace) -> dict:
    import torch

    from alignloop.config import DPOConfig, ModelConfig
    from alignloop.data.jsonl import read_jsonl
    from alignloop.data.records import Ranking
    from alignloop.train.dpo import train_dpo

    if args.threads:
        torch.set_num_threads(args.threads)
    train = read_jsonl(args.train, Ranking)
    cfg = DPOConfig(
        model=ModelConfig(name=args.model),
        beta=args.beta,
        lr=args.lr,
        epochs=args.ours_epochs,
        prompts_per_step=args.prompts_per_step,
        adam_betas=(0.9, args.ours_beta2),
        micro_batch_completions=args.micro_batch,
        max_length=MAX_LENGTH,
        val_fraction=0.0,
    )
    res = train_dpo(cfg, train, Path(args.out).parent / "ours-run", val=[], progress=False)
    pairs = args.ours_epochs * sum(len(list(r.pairs())) for r in train)  # pairs learned, every epoch counted
    seconds = res.reference_seconds + res.train_seconds
    os.replace(res.policy_dir, args.out)
    return {
        "pairs": pairs,
        "train_seconds": seconds,
        "reference_seconds": res.reference_seconds,
        "pairs_per_s": pairs / seconds,
        "steps": res.steps,
        "peak_rss_mib": peak_rss_mib(),
    }


def eval_worker(args: argparse.Namespace) -> dict:
    """Held-out implicit-reward accuracy of each saved policy, reference = the starting model."""
    import torch

    from alignloop.config import DPOConfig
    from alignloop.data.jsonl import read_jsonl
    from alignloop.data.records import Ranking
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.models.reward import pad_id
    from alignloop.train.dpo import encode_rankings, evaluate_dpo, reference_logprobs

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DPOConfig(beta=args.beta, max_length=MAX_LENGTH, micro_batch_completions=args.micro_batch)
    tok = load_tokenizer(args.model)
    data = encode_rankings(tok, read_jsonl(args.heldout, Ranking), MAX_LENGTH)
    device = torch.device("cpu")
    ref = reference_logprobs(load_causal_lm(args.model), data, pad_id(tok), args.micro_batch, device)
    out = {}
    for name, folder in (("trl", args.trl_policy), ("ours", args.ours_policy)):
        m = evaluate_dpo(load_causal_lm(folder), data, ref, pad_id(tok), cfg)
        out[name] = {"accuracy": m["val/accuracy"], "margin": m["val/margin"], "heldout_pairs": m["val/pairs"]}
    return out


# ---------------------------------------------------------------------------------------------
# The orchestrator.


def run_worker(python: Path, role: str, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result = Path(fh.name)
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", role, "--result", str(result), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", TOKENIZERS_PARALLELISM="false")
    env["ALIGNLOOP_NO_PROGRESS"] = "1"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{role} worker failed ({' '.join(cmd)})")
    out = json.loads(result.read_text())
    result.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="4,9")
    ap.add_argument("--prompts", default="12,4", help="training prompts per K (one number, or one per K)")
    ap.add_argument("--held-out", type=int, default=8, help="held-out (test) prompts")
    ap.add_argument("--val-prompts", type=int, default=8, help="validation prompts (for choosing settings)")
    ap.add_argument("--split", choices=["val", "test"], default="test", help="where the accuracy is measured")
    ap.add_argument("--trl-batch", default="8", help="TRL pairs per step: a number, or 'match' (ours per step)")
    ap.add_argument("--ours-lr", type=float, default=1e-4, help="ours: learning rate (chosen on --split val)")
    ap.add_argument("--reuse-trl", action="store_true", help="reuse a TRL run of the same settings in --work")
    ap.add_argument("--ours-beta2", type=float, default=0.95, help="ours: AdamW beta2 (TRL: 0.999)")
    ap.add_argument("--layers", type=int, default=4, help="SmolLM2 decoder layers kept (0 = all 30)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every worker (0 = torch's default)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--prompts-per-step", type=int, default=1, help="ours: prompts (batch elements) per step")
    ap.add_argument("--ours-epochs", type=int, default=1, help="ours: epochs (the comparison is at 1)")
    ap.add_argument("--trl-gradient-checkpointing", type=int, default=1, help="TRL's default is on (1)")
    ap.add_argument("--trl-precompute-ref", type=int, default=0, help="TRL's default is off (0)")
    ap.add_argument("--work", default="", help="folder for data and models (default: a temporary one)")
    # worker-only options
    ap.add_argument("--worker", choices=["trl", "ours", "eval"], help=argparse.SUPPRESS)
    for name in ("--result", "--model", "--train", "--heldout", "--out", "--trl-policy", "--ours-policy"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    ap.add_argument("--micro-batch", type=int, default=16, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        out = {"trl": trl_worker, "ours": ours_worker, "eval": eval_worker}[args.worker](args)
        Path(args.result).write_text(json.dumps(out))
        return

    t_start = time.time()
    trl_python = ensure_trl_venv()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work, args.layers)
    ks = [int(k) for k in args.ks.split(",")]
    counts = [int(n) for n in args.prompts.split(",")]
    counts = counts * len(ks) if len(counts) == 1 else counts
    rows = []
    for k, n in zip(ks, counts, strict=True):
        train, held, val = split_data(work, k, n, args.val_prompts, args.held_out)
        measured = held if args.split == "test" else val
        trl_batch = math.comb(k, 2) * args.prompts_per_step if args.trl_batch == "match" else int(args.trl_batch)
        common = ["--model", str(model), "--train", str(train), "--heldout", str(measured)]
        common += ["--threads", str(args.threads), "--beta", str(args.beta)]
        common += ["--micro-batch", str(k * args.prompts_per_step)]
        trl_key = f"trl-k{k}-n{n}-b{trl_batch}-lr{args.lr}-gc{args.trl_gradient_checkpointing}"
        trl_key += f"-pre{args.trl_precompute_ref}"
        saved = work / f"{trl_key}.json"
        if args.reuse_trl and saved.exists():  # the same TRL run (same data and settings) measured before
            print(f"[K={k}] TRL DPOTrainer: reusing {saved}", flush=True)
            trl = json.loads(saved.read_text())
        else:
            print(f"[K={k}] TRL DPOTrainer on {n} prompts ...", flush=True)
            trl = run_worker(
                trl_python,
                "trl",
                common
                + ["--out", str(work / trl_key), "--trl-gradient-checkpointing", str(args.trl_gradient_checkpointing)]
                + ["--trl-precompute-ref", str(args.trl_precompute_ref), "--lr", str(args.lr)]
                + ["--trl-batch", str(trl_batch)],
            )
            saved.write_text(json.dumps(trl))
        print(f"[K={k}] ours ...", flush=True)
        shutil.rmtree(work / f"ours-k{k}", ignore_errors=True)
        ours = run_worker(
            Path(sys.executable),
            "ours",
            common
            + ["--out", str(work / f"ours-k{k}" / "policy"), "--prompts-per-step", str(args.prompts_per_step)]
            + ["--ours-epochs", str(args.ours_epochs), "--lr", str(args.ours_lr)]
            + ["--ours-beta2", str(args.ours_beta2)],
        )
        print(f"[K={k}] held-out evaluation of both policies ...", flush=True)
        acc = run_worker(
            Path(sys.executable),
            "eval",
            common + ["--trl-policy", str(work / trl_key), "--ours-policy", str(work / f"ours-k{k}" / "policy")],
        )
        rows.append((k, n, trl | acc["trl"] | {"batch": trl_batch}, ours | acc["ours"]))
    print_table(rows, args, time.time() - t_start)


def print_table(rows: list, args: argparse.Namespace, wall: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="DPO, one epoch: TRL 1.16 DPOTrainer (pairs as rows) vs alignloop (K completions per element)")
    for col in ("K", "prompts", "trainer", "pairs", "steps", "pairs/s", "speed-up", "peak RSS MiB", "held-out acc"):
        table.add_column(col, justify="right")
    for k, n, trl, ours in rows:
        for name, r in (("TRL 1.16", trl), ("alignloop", ours)):
            table.add_row(
                str(k) if name == "TRL 1.16" else "",
                str(n) if name == "TRL 1.16" else "",
                name,
                str(r["pairs"]),
                str(r["steps"]),
                f"{r['pairs_per_s']:.2f}",
                f"{r['pairs_per_s'] / trl['pairs_per_s']:.1f}x",
                f"{r['peak_rss_mib']:.0f}",
                f"{r['accuracy']:.3f}",
                end_section=name == "alignloop",
            )
    Console(width=160).print(table)
    layers = f"first {args.layers} of 30 layers" if args.layers > 0 else "all 30 layers"
    measured = f"{args.held_out} test" if args.split == "test" else f"{args.val_prompts} validation"
    trl_steps = ", ".join(f"K={k}: {t['batch']} pairs/step ({t['steps']} steps)" for k, _, t, _ in rows)
    per_step = {k: math.comb(k, 2) * args.prompts_per_step for k, _, _, _ in rows}
    ours_steps = ", ".join(f"K={k}: {per_step[k]} pairs/step ({o['steps']} steps)" for k, _, _, o in rows)
    print(
        f"model: SmolLM2-135M-Instruct, {layers}; fp32; lr TRL {args.lr}, ours {args.ours_lr}; beta "
        f"{args.beta}, cosine decay, no warm-up, max_length {MAX_LENGTH}; torch threads {args.threads or 'default'}; "
        f"accuracy on {measured} prompts ({', '.join(str(int(t['heldout_pairs'])) for _, _, t, _ in rows)} pairs).\n"
        f"Pairs per optimizer step: TRL {trl_steps}; ours {args.prompts_per_step} prompt(s) = {ours_steps}.\n"
        f"Remaining differences: TRL shuffles pairs, ours keeps a prompt's C(K,2) pairs in one step (mean over a "
        f"prompt's pairs, then over prompts; TRL: mean over the step's pairs); AdamW betas TRL (0.9, 0.999), ours "
        f"(0.9, {args.ours_beta2}); TRL gradient checkpointing "
        f"{'on' if args.trl_gradient_checkpointing else 'off'} (ours off), "
        f"reference {'precomputed' if args.trl_precompute_ref else 'a second model run every step'} (ours: cached "
        f"before step 1, counted in our time); TRL tokenises prompt+completion together, ours query and completion "
        f"apart (the sampler's tokens); TRL's fused LM-head log-probs, ours logits over the response window.\n"
        f"Load average at the end {os.getloadavg()[0]:.1f} (a shared, loaded 2-core machine: ratios come from one "
        f"run each, back to back); bench wall time {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
