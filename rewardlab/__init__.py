"""rewardlab: collect human preferences, design rewards, align language models (TRL PPO + LoRA)."""

__version__ = "0.1.0"
