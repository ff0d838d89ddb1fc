"""alignloop: the InstructGPT RLHF loop (feedback -> SFT -> reward model -> PPO -> evaluation) in one tool."""

__version__ = "0.1.0"
