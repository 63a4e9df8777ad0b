"""The reward-model training config: one documented dataclass, loaded from YAML plus overrides.

Every field has a one-line docstring (what it does, its unit); it is also the field's ``--help``.
A run is ``defaults < YAML file (--config run.yaml) < command-line --key value``; unknown keys in
either place are an error that lists the valid ones. The resolved config is saved next to the
model as ``reward_config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from rewardlab.config import documented, load_dataclass, save_dataclass
from rewardlab.config import help_epilog as config_help
from rewardlab.errors import RewardlabError

CONFIG_FILE = "reward_config.yaml"


@documented
@dataclass
class RewardTrainConfig:
    """How ``rewardlab reward train`` trains a reward model (TRL RewardTrainer underneath)."""

    model: str = "smollm2-135m"
    """Backbone: an alias (smollm2-135m, all-minilm-l6-v2), a local model folder or a hub id."""
    max_layers: int | None = 18
    """Keep only the backbone's first this many transformer layers (all when it has fewer; null: all)."""
    max_length: int = 256
    """Longest prompt+reply in tokens; longer pairs are cut (prompt from the left), never dropped."""
    style: str = "auto"
    """Text layout: auto (chat template if the tokenizer has one, else explicit), conversational, explicit."""
    head_init: str = "probe"
    """Score head start: probe (fit on the frozen backbone's features first, see reward_models/probe.py) or random."""
    lora: bool = True
    """Train LoRA adapters plus the score head instead of all weights (merged into the saved model)."""
    lora_r: int = 16
    """LoRA rank (adapter width, in dimensions)."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_target_modules: list[str] | None = None
    """Module names LoRA adapts (e.g. q_proj v_proj); empty: peft's default for the architecture."""
    lora_top_layers: int | None = 9
    """LoRA only in the last this many transformer layers; the frozen ones below need no backward pass (null: all)."""
    learning_rate: float = 1e-4
    """Peak learning rate of AdamW (per step, after warmup)."""
    epochs: float = 1.0
    """Passes over the training pairs (fractions allowed); max_steps overrides it."""
    batch_size: int = 4
    """Preference pairs per optimizer micro-step (each pair is two sequences)."""
    gradient_accumulation_steps: int = 4
    """Micro-steps summed into one optimizer step (effective batch = batch_size x this)."""
    warmup_ratio: float = 0.1
    """Fraction of all optimizer steps spent warming the learning rate up from 0."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 20-30% slower."""
    center_rewards_coefficient: float | None = 0.01
    """Weight of the mean-zero reward penalty (TRL, Eisenstein et al. 2023); null turns it off."""
    eval_fraction: float = 0.1
    """Share of prompts held out for evaluation when no eval set is given (0 = none)."""
    seed: int = 42
    """Random seed for the head's initialization, shuffling and the held-out split."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run all epochs)."""
    eval_steps: int = 0
    """Evaluate on the held-out pairs every this many steps (0: only once, at the end)."""
    save_steps: int = 200
    """Write a checkpoint every this many steps (the last one is kept if training fails)."""
    logging_steps: int = 10
    """Log loss, accuracy and margin every this many steps (to metrics.jsonl and the console)."""
    time_budget_s: float | None = None
    """Stop cleanly after this much training wall time, in seconds, and save (null: no limit)."""


def valid_keys() -> list[str]:
    return [f.name for f in fields(RewardTrainConfig)]


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RewardTrainConfig:
    """Defaults, then the YAML file ``path``, then ``overrides`` (``--key value`` strings or a dict)."""
    return validate(load_dataclass(RewardTrainConfig, path, overrides))


def validate(config: RewardTrainConfig) -> RewardTrainConfig:
    """Check ranges; raise a one-line RewardlabError naming the key."""
    checks = [
        (config.max_length >= 32, "max_length must be at least 32 tokens"),
        (config.max_layers is None or config.max_layers >= 1, "max_layers must be at least 1 or null"),
        (config.lora_r >= 1, "lora_r must be at least 1"),
        (config.lora_top_layers is None or config.lora_top_layers >= 1, "lora_top_layers must be at least 1 or null"),
        (config.learning_rate > 0, "learning_rate must be positive"),
        (config.epochs > 0, "epochs must be positive"),
        (config.batch_size >= 1, "batch_size must be at least 1"),
        (config.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be at least 1"),
        (0 <= config.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
        (0 <= config.eval_fraction < 1, "eval_fraction must be in [0, 1)"),
        (config.max_steps == -1 or config.max_steps >= 1, "max_steps must be -1 or at least 1"),
        (config.eval_steps >= 0 and config.save_steps >= 0, "eval_steps and save_steps must be >= 0"),
        (config.logging_steps >= 1, "logging_steps must be at least 1"),
        (config.time_budget_s is None or config.time_budget_s > 0, "time_budget_s must be positive or null"),
        (config.style in ("auto", "conversational", "explicit"), "style must be auto, conversational or explicit"),
        (config.head_init in ("probe", "random"), "head_init must be probe or random"),
    ]
    for ok, message in checks:
        if not ok:
            raise RewardlabError(f"bad config: {message}")
    return config


def save_config(config: RewardTrainConfig, folder: Path) -> Path:
    """Write ``reward_config.yaml`` (every key, with its docstring as a comment) into ``folder``."""
    return save_dataclass(
        config, Path(folder) / CONFIG_FILE, "rewardlab reward train config (rewardlab reward train --config this.yaml)"
    )


def help_epilog() -> str:
    """The config keys and their docstrings, for the command's --help."""
    return config_help(RewardTrainConfig)
