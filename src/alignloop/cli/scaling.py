"""Help texts of the options every training command shares: precision, sharding, activation memory.

They set the stage config's ``distributed:`` section (see :class:`alignloop.config.DistributedConfig`);
the launcher (``accelerate launch``/``torchrun``) only starts the processes.
"""

from __future__ import annotations

DTYPE_HELP = (
    "Compute precision: fp32, bf16 or fp16 (autocast; weights and optimizer stay fp32). Sets distributed.dtype."
)
STRATEGY_HELP = "Over several processes: ddp (full replica each) or fsdp (FSDP2 shards). Sets distributed.strategy."
GC_HELP = "Recompute activations in backward (less memory). Sets distributed.gradient_checkpointing."
FROZEN_HELP = "Weights of the frozen reference and reward model: fp32, bf16 or fp16. Sets distributed.frozen_dtype."
