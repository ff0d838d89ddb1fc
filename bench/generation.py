"""Our sampling loop vs transformers' model.generate: same model, prompts and settings.

    .venv/bin/python bench/generation.py [--model smollm2-135m-instruct] [--prompts 8] [--tokens 32] [--repeats 3]

Both decode exactly --tokens new tokens per prompt (EOS suppressed: the work is equal whatever
is sampled), left-padded, with the KV cache, temperature 0.7. Prints the median wall time of
each, and checks that greedy decoding gives the same tokens in both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from alignloop.config import GenerationConfig  # noqa: E402
from alignloop.models import load_policy  # noqa: E402
from alignloop.models.generation import generate, left_pad, query_token_ids  # noqa: E402

PROMPTS = [
    "Write a short poem about the ocean.",
    "Explain why the sky is blue.",
    "Give me three tips for learning to cook.",
    "What is the capital of France?",
    "Summarize the plot of a heist movie in two sentences.",
    "Name three fruits that are red.",
    "How do I make my houseplants grow faster?",
    "Describe a sunny morning in a small village.",
]


def hf_generate(model, tok, prompts, tokens: int, temperature: float, seed: int, force_length: bool = True):
    ids, mask = left_pad([query_token_ids(tok, p) for p in prompts], tok.pad_token_id)
    torch.manual_seed(seed)
    kw = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature > 0 else dict(do_sample=False)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens if force_length else 0,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kw,
        )  # fmt: skip
    return out[:, ids.shape[1] :]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model, tok = load_policy(args.model)
    model.eval()
    prompts = (PROMPTS * (args.prompts // len(PROMPTS) + 1))[: args.prompts]
    cfg = GenerationConfig(max_new_tokens=args.tokens, temperature=0.7, batch_size=args.prompts)
    ours_t, hf_t = [], []
    generate(model, tok, prompts[:2], GenerationConfig(max_new_tokens=2))  # warm-up
    for r in range(args.repeats):
        t0 = time.perf_counter()
        out = generate(model, tok, prompts, cfg, seed=r, stop_token_ids=[])
        ours_t.append(time.perf_counter() - t0)
        assert out.response_ids.shape[1] == args.tokens
        t0 = time.perf_counter()
        hf = hf_generate(model, tok, prompts, args.tokens, 0.7, r)
        hf_t.append(time.perf_counter() - t0)
        assert hf.shape[1] == args.tokens
    # greedy with normal EOS stopping: the same tokens, up to and including EOS, in both
    greedy_cfg = GenerationConfig(max_new_tokens=args.tokens, temperature=0, batch_size=args.prompts)
    ours_g = generate(model, tok, prompts, greedy_cfg)
    hf_g = hf_generate(model, tok, prompts, args.tokens, 0.0, 0, force_length=False)
    same = 0
    for i in range(len(prompts)):
        n = int(ours_g.response_mask[i].sum())
        hf_row = hf_g[i].tolist() + [tok.pad_token_id] * args.tokens
        same += ours_g.response_ids[i, :n].tolist() == hf_row[:n] and (
            n == args.tokens or hf_row[n] == tok.pad_token_id
        )
    same /= len(prompts)
    threads = torch.get_num_threads()
    print(f"model {args.model}, {args.prompts} prompts x {args.tokens} sampled tokens, torch threads {threads}")
    for name, times in (("alignloop generate   ", ours_t), ("transformers generate", hf_t)):
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"{name}: median {statistics.median(times):.2f} s  (runs: {runs})")
    print(f"greedy: identical token sequences for {same:.0%} of prompts")


if __name__ == "__main__":
    main()
