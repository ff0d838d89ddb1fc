"""The thin layer over Accelerate that every trainer shares: one process or many, CPU or GPUs.

Two seeds, as the RLHF implementation notes ask (SPEC section 6): the DATA seed is shared by
all ranks, so every rank computes the same shuffled order and takes its own slice of it; the
SAMPLING seed (dropout, generation) differs per rank, so ranks do not draw identical samples.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch


def build_accelerator(cpu: bool | None = None) -> Any:
    """An ``accelerate.Accelerator`` (single process when not launched with ``accelerate launch``/torchrun).

    It only connects the processes and picks the device (the CPU when no GPU is visible, so a
    multi-process CPU launch runs over gloo); precision and sharding are set by :class:`Precision`
    and :func:`place_model`, never by Accelerate."""
    os.environ.setdefault("ACCELERATE_DISABLE_RICH", "1")
    from accelerate import Accelerator

    return Accelerator(cpu=default_cpu() if cpu is None else cpu)


def rank_seed(seed: int, process_index: int) -> int:
    """The per-rank sampling seed: distinct per rank, reproducible across runs."""
    return seed + 1000003 * process_index


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(n: int, data_seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: the same on every rank, different per epoch."""
    g = torch.Generator().manual_seed(data_seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def step_indices(order: Sequence[int], step: int, global_batch: int, world: int) -> list[int]:
    """Indices of optimizer step ``step`` within an epoch's ``order``. The last step of an epoch
    may be short; with several ranks it is topped up from the epoch's start so every rank gets
    the same number of examples (DistributedSampler does the same)."""
    chunk = list(order[step * global_batch : (step + 1) * global_batch])
    if world > 1 and len(chunk) % world:
        need = world - len(chunk) % world
        chunk += list(order[:need])
    return chunk


def rank_slice(indices: Sequence[int], process_index: int, world: int) -> list[int]:
    """This rank's share of a global list of indices (strided, so shares differ by at most one)."""
    return list(indices[process_index::world])


# ---------------------------------------------------------------------------------------------
# Devices, compute precision, sharding: what ``distributed:`` in a stage config selects.
#
# Accelerate only starts and connects the processes (``build_accelerator``). Mixed precision is
# ours rather than Accelerate's because Accelerate's setting is process-wide (a second trainer in
# the same process with another precision is refused), and sharding is ours because Accelerate
# drops ``distributed_type: FSDP`` on a CPU-only machine. FSDP2's ``fully_shard`` is the same
# call over gloo on CPUs and over NCCL on GPUs, so what the CPU tests check is what GPUs run.

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def default_cpu() -> bool:
    """Run on the CPU when no GPU is visible (Accelerate would otherwise ignore a multi-process
    CPU launch and leave every process training alone)."""
    return not torch.cuda.is_available()


def on_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


#: CPU instruction sets with bf16 matrix products in hardware (Linux /proc/cpuinfo flag names).
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether bf16 autocast makes this machine's matrix products faster rather than slower.

    True on a GPU that supports bf16, and on a CPU whose flags include AVX512-BF16 or AMX-BF16
    (there bf16 products run ~2-4x faster than fp32 ones; without them bf16 is emulated and
    slower). Deterministic per machine, unlike a timing probe. ``cpuinfo``: the text of
    /proc/cpuinfo (read when None; a system without it counts as no native bf16)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return bool(NATIVE_BF16_CPU_FLAGS & set(value.split()))
    return False


class Precision:
    """One trainer's compute precision: ``fp32``, or ``bf16``/``fp16`` autocast over fp32 weights.

    The trainable weights and the optimizer state stay fp32 (master weights): autocast runs the
    matrix products in the low precision and keeps reductions (softmax, losses) in fp32. fp16's
    narrow exponent also needs loss scaling, which :meth:`backward` and :meth:`step` apply."""

    def __init__(self, name: str, device: torch.device | str) -> None:
        from alignloop.errors import AlignloopError

        if name not in AUTOCAST_DTYPES:
            raise AlignloopError(f"unknown dtype {name!r}", "use fp32, bf16 or fp16")
        self.device = torch.device(device)
        if name == "fp16" and self.device.type != "cuda":
            raise AlignloopError("dtype fp16 needs a GPU (loss scaling and fp16 kernels)", "use --dtype bf16 on a CPU")
        self.name, self.dtype = name, AUTOCAST_DTYPES[name]
        self.scaler = torch.amp.GradScaler(self.device.type) if name == "fp16" else None

    def autocast(self) -> Any:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def wrap(self, model: Any) -> Any:
        """Make every call of ``model`` (training, evaluation, sampling) run under autocast."""
        if self.dtype is None or getattr(model, "_alignloop_autocast", None) == self.name:
            return model
        inner = model.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            with self.autocast():
                return inner(*args, **kwargs)

        model.forward = forward
        model._alignloop_autocast = self.name
        return model

    @contextlib.contextmanager
    def frozen_weights_cast(self, *models: Any, keep: Any = None) -> Iterator[int]:
        """Hold the frozen fp32 ``nn.Linear`` weights of ``models`` in the autocast dtype while inside.

        Why: autocast casts every weight again at every forward (it caches trainable leaves only), though
        a frozen one cannot change: ~45 % of a LoRA policy's rollout on a CPU. The products are bit-identical
        (autocast would make these very tensors). Only Linear layers (an embedding is not autocast: its output
        dtype would change); the module's attribute is swapped, not the tensor, so a weight tied to an
        embedding stays fp32 there. Originals are back on exit. Yields how many layers it swapped (0 without
        autocast; FSDP shards are left alone). ``keep``: a model run outside autocast (an RM under a shared value)."""
        kept = {id(m) for m in keep.modules()} if keep is not None else set()
        swapped: list[tuple[torch.nn.Linear, str, torch.nn.Parameter]] = []
        try:
            for model in models if self.dtype is not None else ():
                if model is None or is_sharded(model):
                    continue
                for module in model.modules():
                    if not isinstance(module, torch.nn.Linear) or module.weight.requires_grad or id(module) in kept:
                        continue
                    for name in ("weight", "bias"):
                        param = module._parameters.get(name)
                        if param is not None and param.dtype == torch.float32 and not param.requires_grad:
                            swapped.append((module, name, param))
                            cast = torch.nn.Parameter(param.detach().to(self.dtype), requires_grad=False)
                            module._parameters[name] = cast
            yield len({id(m) for m, _, _ in swapped})
        finally:
            for module, name, param in reversed(swapped):
                module._parameters[name] = param

    def backward(self, accelerator: Any, loss: torch.Tensor) -> None:
        accelerator.backward(self.scaler.scale(loss) if self.scaler is not None else loss)

    def step(self, optimizer: Any, params: Sequence[torch.nn.Parameter], max_grad_norm: float) -> float | None:
        """Unscale (fp16), clip to ``max_grad_norm`` (0 = no clipping), step; the gradient norm or None."""
        opt = getattr(optimizer, "optimizer", optimizer)  # under an Accelerate wrapper
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        norm = None
        if max_grad_norm > 0:
            total = torch.nn.utils.clip_grad_norm_(list(params), max_grad_norm)
            if hasattr(total, "full_tensor"):  # a DTensor under FSDP
                total = total.full_tensor()
            norm = float(total)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        return norm


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each block's activations in backward instead of keeping them (memory for compute).
    Non-reentrant checkpointing works with frozen inputs (LoRA) and with FSDP."""
    found = False
    for m in model.modules():
        if hasattr(m, "gradient_checkpointing_enable") and getattr(m, "supports_gradient_checkpointing", False):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            found = True
            break
    if not found:
        from alignloop.errors import AlignloopError

        raise AlignloopError(f"gradient_checkpointing: {type(model).__name__} does not support it")


def is_sharded(model: Any) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


def shard_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2: each transformer block its own shard group, then the rest (embeddings, heads) at the root.

    Parameters, gradients and the optimizer state built on them afterwards are split over the
    processes (each holds about 1/world of every block); a block's weights are gathered for its
    forward and backward only. Frozen and trainable parameters may share a block (LoRA). A meta
    copy of the unsharded module is kept on the main process, the skeleton :func:`gathered_model`
    fills to save a plain Hugging Face folder."""
    import copy

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world, rank = dist.get_world_size(), dist.get_rank()
    skeleton = copy.deepcopy(model).to("meta") if rank == 0 else None
    model.to(device)
    # Every process must start from the same weights: newly initialised ones (LoRA adapters, heads)
    # were drawn from each rank's own seed. DDP broadcasts rank 0's at wrapping; fully_shard does not.
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
    mesh = init_device_mesh(device.type, (world,))
    done: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and not any(name.startswith(d + ".") for d in done):
            for i, block in enumerate(module):
                if any(True for _ in block.parameters()):
                    fully_shard(block, mesh=mesh)
                    done.append(f"{name}.{i}")
    fully_shard(model, mesh=mesh)
    object.__setattr__(model, "_alignloop_skeleton", skeleton)  # not a submodule: no hooks, no state_dict
    return model


def place_model(model: Any, accelerator: Any, strategy: str, precision: Precision, optimizer: Any = None) -> Any:
    """Put a trainable model on this process's device under the chosen strategy, with autocast.

    ``ddp``: Accelerate's wrapper (a full replica per process, gradients averaged). ``fsdp`` with
    several processes: :func:`shard_model`; with one process there is nothing to shard and it is
    the plain model. Returns (model, optimizer); build the optimizer AFTER this call under FSDP
    (its state must live on the shards), so pass ``optimizer=None`` and build it then, or pass a
    factory-built one under ddp."""
    if strategy == "fsdp" and accelerator.num_processes > 1:
        model = shard_model(model, accelerator.device)
        precision.wrap(model)
        return model, optimizer
    model.to(accelerator.device)
    precision.wrap(model)
    if optimizer is None:
        return accelerator.prepare(model), None
    return accelerator.prepare(model, optimizer)


def gathered_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The full state dict: gathered from the shards on the main process (a collective: every
    process must call it; the others get ``{}``), or the model's own otherwise."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gathered_model(model: Any) -> Any:
    """A plain (unsharded) copy of a sharded model on the main process, on the CPU, for saving as
    a Hugging Face folder; ``None`` on the other processes. Collective. An unsharded model is
    returned as it is."""
    if not is_sharded(model):
        return model
    import copy

    import torch.distributed as dist

    state = gathered_state_dict(model)
    if dist.get_rank() != 0:
        return None
    plain = copy.deepcopy(model._alignloop_skeleton)
    plain.load_state_dict(state, assign=True, strict=False)
    for name, buf in model.named_buffers():  # buffers are not sharded: every process holds them whole
        owner, _, leaf = name.rpartition(".")
        target = plain.get_submodule(owner) if owner else plain
        target._buffers[leaf] = buf.detach().to("cpu").clone()
    for m in plain.modules():  # loading assigned tied weights (embeddings / LM head) one tensor each: tie again
        if hasattr(m, "tie_weights"):
            m.tie_weights()
            break
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"the gathered model misses {missing[:3]}")
    return plain


def optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer state for a checkpoint: gathered whole (keyed by parameter name) under FSDP
    (a collective), the optimizer's own ``state_dict`` otherwise."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opt = getattr(optimizer, "optimizer", optimizer)
    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Restore :func:`optimizer_state`: every process reads the whole state and keeps its shard."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    opt = getattr(optimizer, "optimizer", optimizer)
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def equal_passes(n: int, model: Any, device: torch.device) -> int:
    """Forward/backward passes this process runs in a step: its own ``n``, or under FSDP the most
    any process has (each pass gathers the shards, a collective: a process with fewer passes
    repeats one with weight 0, and one that skipped a backward would leave the others waiting)."""
    if not is_sharded(model):
        return n
    import torch.distributed as dist

    most = torch.tensor([n], device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most)


def local_param_count(model: Any, trainable_only: bool = True) -> int:
    """Parameter elements this process actually holds (a shard's local size under FSDP)."""
    total = 0
    for p in model.parameters():
        if trainable_only and not p.requires_grad:
            continue
        total += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    return total


def release_host_memory(device: torch.device | str) -> None:
    """Return freed heap memory to the OS after a CPU pass (glibc ``malloc_trim``); nothing on a GPU,
    where the caching allocator owns device memory and a trim would only cost a system call."""
    if on_cuda(device):
        return
    from alignloop.train.cpu_lanes import release_freed_memory

    release_freed_memory()


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable weights by name, whole and on the CPU (gathered from the shards under FSDP:
    a collective; the other processes get ``{}``)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state = gathered_state_dict(model)
    return {n: t.detach().contiguous().cpu() for n, t in state.items() if n in trainable}


def frozen_copy(value: Any, rm: Any, dtype: str) -> None:
    """Cast the frozen reward model to ``dtype`` (e.g. bf16: half its memory) while the value model
    it initialised keeps fp32 weights: token embeddings the value shares with the RM get their own copy."""
    import copy

    emb = rm.backbone.get_input_embeddings()
    trunk = value.trunk
    if getattr(value, "shares_trunk", False):
        from alignloop.errors import AlignloopError

        raise AlignloopError(
            "a shared value model trains on the RM's own trunk: it cannot be sharded or kept apart from it",
            "use value_model: separate (or frozen_dtype: fp32 and strategy: ddp)",
        )
    if trunk.get_input_embeddings() is emb:
        trunk.set_input_embeddings(copy.deepcopy(emb))
    rm.to(WEIGHT_DTYPES[dtype])
