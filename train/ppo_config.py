"""The PPO run config: one documented dataclass, loaded from YAML plus ``--key value`` overrides.

A run is ``defaults < YAML file (--config run.yaml) < command line --key value``
(``rewardlab.config``). Unknown keys in either place are an error that lists the valid ones; every
field's docstring is its ``--help`` and the comment above it in the saved ``ppo_config.yaml``.
``validate`` checks ranges and ``batch_plan`` TRL 1.12's batch arithmetic before any model is
loaded, so a bad batch layout fails in a second, not after minutes of loading.

How TRL 1.12 ``PPOTrainer`` counts (per process, "local"; times the number of processes, "global")::

    rollout batch  = per_device_train_batch_size x gradient_accumulation_steps   prompts per update
    mini-batch     = rollout batch / num_mini_batches                             one optimizer step each
    micro-batch    = per_device_train_batch_size (or the mini-batch, if smaller)  one forward/backward
    updates        = ceil(total_episodes / global rollout batch)

The defaults are for a CPU demo of the default model: 64 episodes in 16 updates of 4 prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from rewardlab.config import documented, load_dataclass, save_dataclass
from rewardlab.config import help_epilog as config_help
from rewardlab.errors import RewardlabError

CONFIG_FILE = "ppo_config.yaml"
VALUE_MODELS = ("shared", "separate")
KL_ESTIMATORS = ("k1", "k3")
SCHEDULERS = ("linear", "constant", "cosine")


@documented
@dataclass
class PPORunConfig:
    """How ``rewardlab ppo`` aligns a policy (TRL 1.12 ``trl.experimental.ppo.PPOTrainer`` + LoRA)."""

    policy: str = "smollm2-135m"
    """Policy base model: an alias, a local model folder or a hub id (LoRA adapters are trained on it)."""
    max_prompt_length: int = 256
    """Longest prompt in tokens after the chat template; longer ones lose their start (counted)."""
    response_length: int = 32
    """New tokens sampled per response; a response that ends earlier stops at EOS."""
    temperature: float = 0.7
    """Sampling temperature of the rollouts (also divides the logits in the PPO loss, as TRL does)."""
    kl_coef: float = 0.05
    """Weight of the per-token KL penalty to the reference (the base model, adapters off)."""
    kl_estimator: str = "k1"
    """KL estimator per token: k1 (log-ratio, unbiased) or k3 (lower variance)."""
    whiten_rewards: bool = False
    """Normalize the per-token rewards of each batch to unit variance (needs mini-batches of >= 8)."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of a response that did not end with EOS (null: no penalty)."""
    per_device_train_batch_size: int = 4
    """Sequences per forward/backward pass in the PPO loss, per process."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per rollout batch (rollout batch = per_device_train_batch_size x this)."""
    num_mini_batches: int = 1
    """Optimizer steps per PPO epoch: the rollout batch is split into this many mini-batches."""
    local_rollout_forward_batch_size: int = 4
    """Sequences generated and scored together in the rollout, per process (memory vs speed)."""
    num_ppo_epochs: int = 1
    """Passes of PPO optimization over each rollout batch."""
    cliprange: float = 0.2
    """PPO policy clip range (the probability ratio is clipped to 1 +- this)."""
    cliprange_value: float = 0.2
    """Clip range of the value prediction around its rollout value."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    gamma: float = 1.0
    """Discount factor per token."""
    lam: float = 0.95
    """GAE lambda (bias-variance trade-off of the advantages)."""
    learning_rate: float = 5e-5
    """Peak AdamW learning rate for the LoRA adapters and the value head."""
    lr_scheduler_type: str = "linear"
    """Learning-rate schedule over all updates: linear (decay to 0), constant or cosine."""
    seed: int = 42
    """Random seed: LoRA and value-head init, prompt order, sampling."""
    total_episodes: int = 64
    """Prompts to roll out in the whole run (updates = ceil(this / global rollout batch))."""
    lora_r: int = 16
    """LoRA rank of the policy adapters (and of the value adapters when value_model is separate)."""
    lora_alpha: int = 32
    """LoRA scaling numerator (updates are scaled by lora_alpha / lora_r)."""
    lora_target_modules: list[str] | None = None
    """Module names LoRA adapts (e.g. q_proj v_proj, or all-linear); empty: peft's default for the architecture."""
    value_model: str = "shared"
    """shared: a value head on the policy's LoRA trunk, one forward pass; separate: its own LoRA copy of the base."""
    cpu_threads: int = 1
    """Torch threads per process on CPU (0: all cores). 1 keeps a run steady on a machine shared with other busy programs."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower (useful on GPUs)."""
    save_every: int = 5
    """Write a resumable checkpoint every this many updates (0: none; the final adapter is always saved)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk (older ones are deleted)."""
    sample_every: int = 5
    """Log sample generations (prompt, response, reward) to samples.jsonl every this many updates (0: never)."""
    num_samples: int = 4
    """Generations logged each time (taken from the update's rollout, so they cost nothing extra)."""
    merge: bool = False
    """Also save the policy with the adapters merged in (a plain transformers model folder)."""


def valid_keys() -> list[str]:
    return [f.name for f in fields(PPORunConfig)]


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> PPORunConfig:
    """Defaults, then the YAML file ``path``, then ``overrides`` (``--key value`` strings or a dict);
    ranges are checked (``validate``) but not the batch arithmetic, which needs the process count."""
    return validate(load_dataclass(PPORunConfig, path, overrides))


def validate(config: PPORunConfig) -> PPORunConfig:
    """Check ranges and choices; raise a one-line RewardlabError naming the key."""
    c = config
    checks = [
        (c.max_prompt_length >= 8, "max_prompt_length must be at least 8 tokens"),
        (c.response_length >= 1, "response_length must be at least 1 token"),
        (c.temperature > 0, "temperature must be positive"),
        (c.kl_coef >= 0, "kl_coef must be >= 0"),
        (c.kl_estimator in KL_ESTIMATORS, f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}"),
        (c.missing_eos_penalty is None or c.missing_eos_penalty >= 0, "missing_eos_penalty must be >= 0 or null"),
        (c.per_device_train_batch_size >= 1, "per_device_train_batch_size must be at least 1"),
        (c.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be at least 1"),
        (c.num_mini_batches >= 1, "num_mini_batches must be at least 1"),
        (c.local_rollout_forward_batch_size >= 1, "local_rollout_forward_batch_size must be at least 1"),
        (c.num_ppo_epochs >= 1, "num_ppo_epochs must be at least 1"),
        (c.cliprange > 0 and c.cliprange_value > 0, "cliprange and cliprange_value must be positive"),
        (c.vf_coef >= 0, "vf_coef must be >= 0"),
        (0 < c.gamma <= 1 and 0 <= c.lam <= 1, "gamma must be in (0, 1] and lam in [0, 1]"),
        (c.learning_rate > 0, "learning_rate must be positive"),
        (c.lr_scheduler_type in SCHEDULERS, f"lr_scheduler_type must be one of {', '.join(SCHEDULERS)}"),
        (c.total_episodes >= 1, "total_episodes must be at least 1"),
        (c.lora_r >= 1 and c.lora_alpha >= 1, "lora_r and lora_alpha must be at least 1"),
        (c.value_model in VALUE_MODELS, f"value_model must be one of {', '.join(VALUE_MODELS)}"),
        (c.save_every >= 0 and c.sample_every >= 0, "save_every and sample_every must be >= 0"),
        (c.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
        (c.cpu_threads >= 0, "cpu_threads must be >= 0 (0: all cores)"),
        (c.num_samples >= 1, "num_samples must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise RewardlabError(f"bad config: {message}")
    return config


@dataclass(frozen=True)
class BatchPlan:
    """TRL's batch sizes for one run, derived from the config and the number of processes."""

    world_size: int
    local_batch_size: int
    """Prompts rolled out per update by each process."""
    batch_size: int
    """Prompts rolled out per update by all processes together."""
    local_mini_batch_size: int
    """Sequences per optimizer step, per process."""
    micro_batch_size: int
    """Sequences per forward/backward pass, per process."""
    updates: int
    """PPO updates (rollout + optimization rounds) in the whole run."""


def batch_plan(config: PPORunConfig, world_size: int = 1, num_prompts: int | None = None) -> BatchPlan:
    """Check TRL 1.12's batch arithmetic for ``world_size`` processes and return the sizes.

    TRL takes the rollout batch as per_device_train_batch_size x gradient_accumulation_steps, splits
    it into num_mini_batches and lets accelerate step the optimizer every gradient_accumulation_steps
    micro-batches. One optimizer step per mini-batch therefore needs the mini-batch to be exactly
    per_device_train_batch_size x gradient_accumulation_steps / num_mini_batches sequences made of
    whole micro-batches that accelerate counts as one accumulation cycle.
    """
    c = config
    pd, ga, nmb = c.per_device_train_batch_size, c.gradient_accumulation_steps, c.num_mini_batches
    local = pd * ga
    if local % nmb:
        raise RewardlabError(
            f"bad batch sizes: the rollout batch per process is per_device_train_batch_size x "
            f"gradient_accumulation_steps = {pd} x {ga} = {local}, which num_mini_batches ({nmb}) does not "
            f"divide; make it a multiple of num_mini_batches"
        )
    mini = local // nmb
    if nmb > 1 and ga > 1:
        raise RewardlabError(
            f"bad batch sizes: num_mini_batches = {nmb} with gradient_accumulation_steps = {ga}: TRL 1.12 would "
            f"accumulate {ga} micro-batches of {pd} across mini-batches and step once per PPO epoch, not once per "
            f"mini-batch (per_device_train_batch_size x gradient_accumulation_steps must equal rollout batch / "
            f"num_mini_batches). Use gradient_accumulation_steps: 1 and per_device_train_batch_size: {local} "
            f"(mini-batches of {local // nmb}), or num_mini_batches: 1"
        )
    if c.whiten_rewards and mini < 8:
        raise RewardlabError(
            f"bad batch sizes: whiten_rewards needs mini-batches of at least 8 sequences per process, got "
            f"{mini} (rollout batch {local} / num_mini_batches {nmb}); raise the batch or set whiten_rewards: false"
        )
    batch = local * world_size
    updates = math.ceil(c.total_episodes / batch)
    if num_prompts is not None and num_prompts < batch:
        raise RewardlabError(
            f"only {num_prompts} prompt(s) for a rollout batch of {batch} ({local} per process x {world_size} "
            f"process(es)); give more prompts or lower per_device_train_batch_size / gradient_accumulation_steps"
        )
    return BatchPlan(world_size, local, batch, mini, min(pd, mini), updates)


def save_config(config: PPORunConfig, folder: Path) -> Path:
    """Write ``ppo_config.yaml`` (every key, its docstring as a comment) into ``folder``."""
    return save_dataclass(config, Path(folder) / CONFIG_FILE, "rewardlab ppo config (rewardlab ppo --config this.yaml)")


def help_epilog() -> str:
    """The config keys and their docstrings, for the command's --help."""
    return config_help(PPORunConfig)
