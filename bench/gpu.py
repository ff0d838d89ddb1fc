"""The GPU benchmark's worker: one part per process (``bench/gpu.sh`` runs each under ``timeout``).

    python3 bench/gpu.py --part ours-sft|ours-rm|ours-ppo|trl-rm|trl-ppo|ds-zero2-sft|ds-zero3-sft --model DIR \
        --work DIR --result FILE
    python3 bench/gpu.py --table DIR        # the table of every part's result in DIR

Every part trains SmolLM2-135M (or any causal LM folder) in bf16 autocast with fp32 master
weights and reports tokens/s, episodes/s (PPO) and the peak GPU memory its process allocated
(``torch.cuda.max_memory_allocated``; on the CPU smoke run, the peak RSS instead). Times cover
training steps only, after one warm-up step (model loading, tokenisation and saving excluded).

Same work on both sides:

* RM: the same rankings (K=4 made-up completions per prompt, ranked by a fixed rule), one epoch,
  lr 1e-5, max length 256, bf16. Ours: 8 prompts per step, each prompt's 4 completions scored
  once (all 6 comparisons from 4 forward rows). TRL 1.16 ``RewardTrainer``: the same rankings
  expanded to their 6 pairs each (chosen + rejected rows: 12 forward rows per prompt), 48 pairs
  per step = the same 8 prompts per step; gradient checkpointing off on both. The comparable
  figure is comparisons (pairs) per second; tokens/s counts the tokens each one forwarded.
* PPO: the same policy, a reward model = the policy's trunk with one seeded head (both formats,
  the same weights), the same 64 prompts; batch 32, one minibatch, 2 PPO epochs, 48 response
  tokens at temperature 0.7, KL 0.05, lr 1e-5. TRL 0.29.1 ``trl.experimental.ppo.PPOTrainer``.
  Episodes/s over whole iterations (sampling, scoring, reference/value passes, updates).
* SFT (ours only, as a reference point): 16 demonstrations per step, 256-token rows.
* SFT under DeepSpeed ZeRO-2 and ZeRO-3 through Accelerate (when ``deepspeed`` imports; see
  :func:`deepspeed_sft`): the same rows in a plain loop, the comparison point for FSDP2 users ask about.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/ppo.py's shared PPO inputs

PPO_BATCH, PPO_EPOCHS, RESPONSE, TEMPERATURE, KL, LR = 32, 2, 48, 0.7, 0.05, 1e-5
RM_K, RM_PROMPTS_PER_STEP, MAX_LEN = 4, 8, 256
POSITIVE = "great wonderful helpful clear friendly excellent happy useful lovely kind bright".split()
FILLER = "the idea here is that we can look at it and then say more about what it means for you in practice".split()


def smoke() -> bool:
    return os.environ.get("ALIGNLOOP_GPU_SMOKE") == "1"


def sizes() -> dict[str, int]:
    """Steps per part: a few on the CPU smoke run, enough for steady figures on a GPU."""
    if smoke():
        return {"sft_steps": 3, "sft_batch": 4, "rm_prompts": 16, "ppo_iters": 2, "ppo_batch": 4, "response": 8}
    return {
        "sft_steps": 40,
        "sft_batch": 16,
        "rm_prompts": 320,
        "ppo_iters": 8,
        "ppo_batch": PPO_BATCH,
        "response": RESPONSE,
    }


def device_info() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    return {"device": "cpu", "torch": torch.__version__}


def peak_memory_gib() -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30, "GPU"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "RSS"


def prompts(n: int) -> list[str]:
    from alignloop.data.builtin import builtin_prompts

    texts = [p.text for p in builtin_prompts()]
    return [texts[i % len(texts)] for i in range(n)]


def completion(rng: random.Random, words: int, positive: float) -> str:
    return " ".join(rng.choice(POSITIVE) if rng.random() < positive else rng.choice(FILLER) for _ in range(words))


# ---------------------------------------------------------------------------------------------- ours


def ours_sft(model: str, work: Path) -> dict:
    from alignloop.config import DistributedConfig, ModelConfig, SFTConfig
    from alignloop.data.records import Demonstration
    from alignloop.models.loading import load_tokenizer
    from alignloop.train.sft import build_example, train_sft

    s = sizes()
    rng = random.Random(0)
    demos = [
        Demonstration(f"p{i}", p, completion(rng, 400, 0.3), "bench")
        for i, p in enumerate(prompts(s["sft_steps"] * s["sft_batch"]))
    ]
    tok = load_tokenizer(model)
    tokens = sum(len(build_example(tok, d.prompt, d.completion, MAX_LEN).input_ids) for d in demos) / len(demos)
    cfg = SFTConfig(
        model=ModelConfig(name=model), epochs=1, lr=LR, batch_size=s["sft_batch"], max_length=MAX_LEN,
        eval_at_start=False, distributed=DistributedConfig(dtype="bf16"),
    )  # fmt: skip
    stamps: list[float] = []
    losses: list[float] = []

    def on_step(step: int, row: dict) -> None:
        stamps.append(time.perf_counter())
        losses.append(row["train/loss"])

    train_sft(cfg, demos, None, work / "sft", on_step=on_step)
    timed = stamps[-1] - stamps[0]
    steps = len(stamps) - 1
    return {
        "tokens_per_s": tokens * s["sft_batch"] * steps / timed,
        "steps": len(stamps),
        "loss_first_last": [losses[0], losses[-1]],
        "note": f"{s['sft_batch']} rows x {tokens:.0f} tokens per step",
    }


def rankings(n: int):
    from alignloop.data.records import Ranking

    rng = random.Random(1)
    out = []
    for i, p in enumerate(prompts(n)):
        shares = [rng.random() for _ in range(RM_K)]
        comps = [completion(rng, rng.randint(40, 90), x) for x in shares]
        order = sorted(range(RM_K), key=lambda j: -sum(w in POSITIVE for w in comps[j].split()))
        out.append(Ranking(f"p{i}", p, comps, order, "bench"))
    return out


def ours_rm(model: str, work: Path) -> dict:
    from alignloop.config import DistributedConfig, ModelConfig, RMConfig
    from alignloop.train.reward import train_reward_model

    data = rankings(sizes()["rm_prompts"])
    cfg = RMConfig(
        model=ModelConfig(name=model), epochs=1, lr=LR, warmup_ratio=0.0, prompts_per_step=RM_PROMPTS_PER_STEP,
        micro_batch_completions=RM_PROMPTS_PER_STEP * RM_K, max_length=MAX_LEN, normalize=False, val_fraction=0.0,
        backbone="causal", distributed=DistributedConfig(dtype="bf16"),
    )  # fmt: skip
    marks: list[float] = []

    losses: list[float] = []

    def on_step(step: int, m: dict) -> None:
        marks.append(m["train_seconds"])
        losses.append(m["train/loss"])

    res = train_reward_model(cfg, data, work / "rm", val=[], progress=False, on_step=on_step)
    from alignloop.models.generation import query_token_ids
    from alignloop.models.loading import load_tokenizer

    tok = load_tokenizer(model)
    per_prompt = sum(
        len(query_token_ids(tok, r.prompt)) + len(tok(c, add_special_tokens=False)["input_ids"]) + 1
        for r in data[:64]
        for c in r.completions
    ) / min(64, len(data))
    steps = len(marks) - 1
    timed = marks[-1] - marks[0]
    pairs = RM_K * (RM_K - 1) // 2 * RM_PROMPTS_PER_STEP * steps
    return {
        "pairs_per_s": pairs / timed,
        "tokens_per_s": per_prompt * RM_PROMPTS_PER_STEP * steps / timed,  # prompt + completion tokens forwarded
        "steps": res.steps,
        "loss_first_last": [losses[0], losses[-1]],
        "note": f"{RM_PROMPTS_PER_STEP} prompts x K={RM_K} per step, 4 forward rows per prompt",
    }


def ppo_spec(model: str, work: Path) -> dict:
    import ppo as ppo_bench  # bench/ppo.py: the policy, the RM in both formats, the prompts

    return ppo_bench.prepare(model, work.parent / "ppo-inputs")  # shared by ours and TRL


def ours_ppo(model: str, work: Path) -> dict:
    from alignloop.config import DistributedConfig, GenerationConfig, PPOConfig
    from alignloop.train.ppo import PPOTrainer

    s = sizes()
    spec = ppo_spec(model, work)
    batch, iters = s["ppo_batch"], s["ppo_iters"]
    cfg = PPOConfig(
        total_episodes=batch * iters, batch_size=batch, minibatch_size=batch, ppo_epochs=PPO_EPOCHS, lr=LR, beta=KL,
        generation=GenerationConfig(max_new_tokens=s["response"], temperature=TEMPERATURE, batch_size=batch),
        micro_batch_size=0, distributed=DistributedConfig(dtype="bf16"),
    )  # fmt: skip
    stamps: list[float] = []
    lengths: list[float] = []

    def on_iteration(i: int, metrics: dict) -> None:
        stamps.append(time.perf_counter())
        lengths.append(metrics["response_length"])

    PPOTrainer(
        cfg, spec["policy"], spec["rm_ours"], spec["prompts"], None, progress=False, on_iteration=on_iteration
    ).train()
    timed = stamps[-1] - stamps[0]
    q = sum(len(x) for x in spec["prompt_ids"]) / len(spec["prompt_ids"])
    episodes = batch * (iters - 1)
    return {
        "episodes_per_s": episodes / timed,
        "tokens_per_s": episodes * (q + sum(lengths[1:]) / len(lengths[1:])) / timed,
        "steps": len(stamps),
        "note": f"batch {batch}, {PPO_EPOCHS} PPO epochs, response <= {s['response']} tokens",
    }


# ---------------------------------------------------------------------------------------------- TRL


def trl_rm(model: str, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from alignloop.data.export import to_trl_preference
    from alignloop.models.loading import load_tokenizer

    data = rankings(sizes()["rm_prompts"])
    tok = AutoTokenizer.from_pretrained(model)
    ours_tok = load_tokenizer(model)  # the pad token ours uses (distinct from EOS)
    tok.pad_token = ours_tok.pad_token
    rows = [
        {**r, "prompt": tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                                add_generation_prompt=True)}
        for r in to_trl_preference(data)
    ]  # fmt: skip
    cuda = torch.cuda.is_available()
    pairs_per_step = RM_PROMPTS_PER_STEP * RM_K * (RM_K - 1) // 2
    config = RewardConfig(
        output_dir=str(work / "trl-rm"), per_device_train_batch_size=pairs_per_step, num_train_epochs=1,
        learning_rate=LR, max_length=MAX_LEN, bf16=True, save_strategy="no", report_to="none", logging_steps=1000,
        disable_tqdm=True, seed=0, use_cpu=not cuda, gradient_checkpointing=False, warmup_steps=0,
    )  # fmt: skip
    stamps: list[float] = []
    tokens: list[int] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    from transformers import AutoModelForSequenceClassification

    # fp32 master weights like ours, whatever dtype the folder stores (bf16 autocast from bf16=True)
    seqcls = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1, dtype=torch.float32)
    seqcls.config.pad_token_id = tok.pad_token_id
    trainer = RewardTrainer(model=seqcls, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok)
    for batch in trainer.get_train_dataloader():
        tokens.append(int(batch["attention_mask"].sum()))
        if len(tokens) >= 8:
            break
    trainer.add_callback(Stamp())
    trainer.train()
    steps = len(stamps) - 1
    timed = stamps[-1] - stamps[0]
    return {
        "pairs_per_s": pairs_per_step * steps / timed,
        "tokens_per_s": sum(tokens) / len(tokens) * steps / timed,  # prompt + completion tokens, chosen and rejected
        "steps": len(stamps),
        "note": f"{pairs_per_step} pairs per step (chosen + rejected rows)",
    }


def trl_ppo(model: str, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    s = sizes()
    spec = ppo_spec(model, work)
    batch, iters = s["ppo_batch"], s["ppo_iters"]
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(spec["rm_trl"], padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(spec["rm_trl"], num_labels=1, dtype=torch.float32)
    rm = AutoModelForSequenceClassification.from_pretrained(spec["rm_trl"], num_labels=1, dtype=torch.float32)
    args = PPOConfig(
        output_dir=str(work / "trl-ppo"), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_mini_batches=1, num_ppo_epochs=PPO_EPOCHS, response_length=s["response"], temperature=TEMPERATURE,
        total_episodes=batch * iters, learning_rate=LR, kl_coef=KL, stop_token="eos", missing_eos_penalty=1.0,
        local_rollout_forward_batch_size=batch, num_sample_generations=0, report_to=[], save_strategy="no",
        use_cpu=not cuda, bf16=True, logging_steps=1, disable_tqdm=True, seed=0,
    )  # fmt: skip
    data = Dataset.from_dict({"input_ids": spec["prompt_ids"]})
    trainer = PPOTrainer(
        args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=rm, train_dataset=data,
        value_model=value, eval_dataset=data,
    )  # fmt: skip
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    trainer.add_callback(Stamp())
    trainer.train()
    timed = stamps[-1] - stamps[0]
    episodes = batch * (len(stamps) - 1)
    return {
        "episodes_per_s": episodes / timed,
        "steps": len(stamps),
        "note": f"batch {batch}, {PPO_EPOCHS} PPO epochs, response = {s['response']} tokens (TRL decodes to the limit)",
    }


# ------------------------------------------------------------------------------------- DeepSpeed


def deepspeed_sft(model: str, work: Path, stage: int) -> dict:
    """SFT's work (the same demonstrations, rows, response-only loss and batch as ``ours-sft``) as a
    plain loop under DeepSpeed ZeRO-``stage`` through Accelerate's ``DeepSpeedPlugin``, one process.

    alignloop's trainers shard with FSDP2 (``distributed.strategy: fsdp``), not DeepSpeed: this row
    shows what Accelerate + DeepSpeed costs on the same work, next to ``ours-sft``. DeepSpeed's bf16
    mode keeps bf16 weights with fp32 master copies in the optimizer (ours: bf16 autocast over fp32
    weights); the optimizer is torch's AdamW (no DeepSpeed op is compiled). On a CPU (the smoke run)
    the process group must be gloo: Accelerate picks no backend there and would leave DeepSpeed out."""
    import socket

    import torch

    with socket.socket() as sock:  # a one-process group: DeepSpeed initialises torch.distributed itself
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in env.items():
        os.environ.setdefault(key, value)
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # a clear ImportError in the table when it is not installed
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    from alignloop.data.records import Demonstration
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.train.sft import build_example, collate, response_logits, response_only_loss

    s = sizes()
    rng = random.Random(0)
    demos = [
        Demonstration(f"p{i}", p, completion(rng, 400, 0.3), "bench")
        for i, p in enumerate(prompts(s["sft_steps"] * s["sft_batch"]))
    ]
    plugin = DeepSpeedPlugin(zero_stage=stage, gradient_accumulation_steps=1, gradient_clipping=1.0)
    acc = Accelerator(
        deepspeed_plugin=plugin, mixed_precision="bf16" if cuda else "no",
        kwargs_handlers=[] if cuda else [InitProcessGroupKwargs(backend="gloo")],
    )  # fmt: skip
    ds_config = acc.state.deepspeed_plugin.deepspeed_config
    ds_config["train_micro_batch_size_per_gpu"] = s["sft_batch"]  # no dataloader for Accelerate to read it from
    ds_config.pop("train_batch_size", None)
    tok = load_tokenizer(model)
    rows = [build_example(tok, d.prompt, d.completion, MAX_LEN) for d in demos]
    net = load_causal_lm(model)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, betas=(0.9, 0.95))
    net, optimizer = acc.prepare(net, optimizer)
    stamps: list[float] = []
    losses: list[float] = []
    for i in range(0, len(rows), s["sft_batch"]):
        batch = {k: v.to(acc.device) for k, v in collate(rows[i : i + s["sft_batch"]], tok.pad_token_id).items()}
        nll, n = response_only_loss(*response_logits(net, batch))
        loss = nll / n
        acc.backward(loss)  # DeepSpeed's engine: backward, clip, step, zero the gradients
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        stamps.append(time.perf_counter())
    tokens = sum(len(r.input_ids) for r in rows) / len(rows)
    timed = stamps[-1] - stamps[0]
    return {
        "tokens_per_s": tokens * s["sft_batch"] * (len(stamps) - 1) / timed,
        "steps": len(stamps),
        "loss_first_last": [losses[0], losses[-1]],
        "note": f"DeepSpeed {deepspeed.__version__} ZeRO-{stage} via Accelerate, 1 process, "
        f"{'bf16 weights' if cuda else 'fp32'}, same rows as ours",
    }


PARTS = {"ours-sft": ours_sft, "ours-rm": ours_rm, "ours-ppo": ours_ppo, "trl-rm": trl_rm, "trl-ppo": trl_ppo}
PARTS |= {"ds-zero2-sft": lambda m, w: deepspeed_sft(m, w, 2), "ds-zero3-sft": lambda m, w: deepspeed_sft(m, w, 3)}
ROWS = [("SFT", "ours-sft", None), ("RM", "ours-rm", "trl-rm"), ("PPO", "ours-ppo", "trl-ppo")]
ROWS += [("SFT", "ds-zero2-sft", None), ("SFT", "ds-zero3-sft", None)]
LABELS = {"ds-zero2-sft": "ZeRO-2", "ds-zero3-sft": "ZeRO-3"}  # the trainer column of rows that are not ours


# ---------------------------------------------------------------------------------------------- table


def table(results_dir: Path) -> str:
    """Every part's result (or its error) as one table, with the ours/TRL ratios."""

    def load(part: str) -> dict:
        f = results_dir / f"{part}.json"
        if f.exists():
            return json.loads(f.read_text())
        err = results_dir / f"{part}.error"
        return {"error": err.read_text().strip()[-300:] if err.exists() else "not run"}

    def fmt(v: float | None, spec: str) -> str:
        return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else "-"

    head = f"{'stage':<5} {'trainer':<9} {'tokens/s':>10} {'pairs/s':>9} {'episodes/s':>10} {'peak mem GiB':>13}  notes"
    lines = [head, "-" * len(head)]
    info = {}
    for stage, ours, theirs in ROWS:
        got = {LABELS.get(ours, "ours"): load(ours)}
        if theirs:
            got["TRL"] = load(theirs)
        for who, r in got.items():
            info = info or r.get("env", {})
            if "error" in r:
                lines.append(f"{stage:<5} {who:<9} failed: {r['error'].splitlines()[-1] if r['error'] else '?'}")
                continue
            mem = f"{fmt(r.get('peak_mem_gib'), '.2f')} {r.get('mem_kind', '')}"
            lines.append(
                f"{stage:<5} {who:<9} {fmt(r.get('tokens_per_s'), '10.0f'):>10} {fmt(r.get('pairs_per_s'), '9.1f'):>9} "
                f"{fmt(r.get('episodes_per_s'), '10.2f'):>10} {mem:>13}  {r.get('note', '')}"
            )
        if theirs and all("error" not in r for r in got.values()):
            a, b = got["ours"], got["TRL"]
            key = "pairs_per_s" if stage == "RM" else "episodes_per_s"
            lines.append(
                f"{stage:<5} {'ours/TRL':<9} {key.replace('_per_s', '/s')}: {a[key] / b[key]:.2f}x, "
                f"peak memory: {a['peak_mem_gib'] / b['peak_mem_gib']:.2f}x"
            )
    if info:
        lines.append(f"device: {info.get('device')}, torch {info.get('torch')}; bf16 autocast, fp32 master weights")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=sorted(PARTS))
    ap.add_argument("--model")
    ap.add_argument("--work")
    ap.add_argument("--result")
    ap.add_argument("--table", help="print the table of the results in this folder")
    ap.add_argument("--append-path", action="append", default=[], help="folders searched AFTER site-packages")
    args = ap.parse_args()
    sys.path.extend(args.append_path)  # carried wheels fill gaps only: the machine's own packages win
    if args.table:
        print(table(Path(args.table)))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="alignloop-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    result = Path(args.result)
    try:
        out = PARTS[args.part](args.model, work / args.part)
        out["peak_mem_gib"], out["mem_kind"] = peak_memory_gib()
        out["env"] = device_info()
        result.write_text(json.dumps(out))
        print(json.dumps(out))
    except BaseException as err:  # the script goes on with the next part; the table shows this line
        import traceback

        traceback.print_exc()
        result.with_suffix(".error").write_text(f"{type(err).__name__}: {err}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
