"""The PPO run config: one documented dataclass, loaded from YAML plus ``--key value`` overrides.

A run is ``defaults < YAML file (--config run.yaml) < command line --key value``. Unknown keys in
either place are an error that lists the valid ones; every field's docstring is its ``--help`` and
the comment above it in the saved ``ppo_config.yaml``. ``validate`` checks ranges and TRL 1.12's
batch arithmetic before any model is loaded, so a bad batch layout fails in a second, not after
minutes of loading.

How TRL 1.12 ``PPOTrainer`` counts (per process, "local"; times the number of processes, "global")::

    rollout batch  = per_device_train_batch_size x gradient_accumulation_steps   prompts per update
    mini-batch     = rollout batch / num_mini_batches                             one optimizer step each
    micro-batch    = per_device_train_batch_size (or the mini-batch, if smaller)  one forward/backward
    updates        = ceil(total_episodes / global rollout batch)

The defaults are for a CPU demo of the default model: 64 episodes in 16 updates of 4 prompts.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
import types
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from rewardlab.errors import RewardlabError

CONFIG_FILE = "ppo_config.yaml"
VALUE_MODELS = ("shared", "separate")
KL_ESTIMATORS = ("k1", "k3")
SCHEDULERS = ("linear", "constant", "cosine")


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


def _docstrings(cls) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body, docs = tree.body[0].body, {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def valid_keys() -> list[str]:
    return [f.name for f in fields(PPORunConfig)]


def _unknown(keys, where: str) -> RewardlabError:
    return RewardlabError(
        f"unknown config key{'s' if len(keys) > 1 else ''} {', '.join(map(repr, keys))} in {where}; "
        f"valid keys: {', '.join(valid_keys())}"
    )


def _coerce(name: str, value: Any, where: str) -> Any:
    """A YAML or command-line value as the field's type (YAML reads 1e-4 as text, for instance)."""
    kind, optional = get_type_hints(PPORunConfig)[name], False
    if get_origin(kind) in (Union, types.UnionType):
        optional, kind = True, next(a for a in get_args(kind) if a is not type(None))
    if isinstance(value, str) and value.strip().lower() in ("null", "none", "~", ""):
        value = None
    if value is None:
        if optional:
            return None
        raise RewardlabError(f"{where}: '{name}' cannot be null")
    try:
        if get_origin(kind) is list:
            items = value if isinstance(value, list) else str(value).replace(",", " ").split()
            return [str(v) for v in items] or None
        if kind is bool:
            text = str(value).strip().lower()
            if isinstance(value, bool) or text in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value if isinstance(value, bool) else text in ("true", "yes", "1", "on")
            raise ValueError
        if kind is int:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, bool) or float(number) != int(number):
                raise ValueError
            return int(number)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise RewardlabError(f"{where}: '{name}' must be {getattr(kind, '__name__', kind)}, got {value!r}") from None


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """``["--key", "value", "--flag", "--k=v"]`` -> {key: text}; a bare flag means true."""
    out, i = {}, 0
    while i < len(overrides):
        token = overrides[i]
        if not token.startswith("--") or len(token) == 2:
            raise RewardlabError(f"unexpected argument {token!r}; give config overrides as --key value")
        key, eq, value = token[2:].partition("=")
        if not eq:
            nxt = overrides[i + 1] if i + 1 < len(overrides) else None
            if nxt is not None and not (nxt.startswith("--") and len(nxt) > 2):
                value, i = nxt, i + 1
            else:
                value = "true"
        out[key.replace("-", "_")] = value
        i += 1
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> PPORunConfig:
    """Defaults, then the YAML file ``path``, then ``overrides`` (``--key value`` strings or a dict);
    ranges are checked (``validate``) but not the batch arithmetic, which needs the process count."""
    values: dict[str, Any] = {}
    if path is not None:
        import yaml

        path = Path(path).expanduser()
        if not path.is_file():
            raise RewardlabError(f"--config {path}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise RewardlabError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(loaded, dict):
            raise RewardlabError(f"{path}: must be a mapping of config keys to values")
        loaded = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        unknown = [k for k in loaded if k not in valid_keys()]
        if unknown:
            raise _unknown(unknown, str(path))
        values.update({k: _coerce(k, v, str(path)) for k, v in loaded.items()})
    if overrides:
        given = dict(overrides) if isinstance(overrides, dict) else parse_overrides(list(overrides))
        where = "overrides" if isinstance(overrides, dict) else "the command line"
        unknown = [k for k in given if k not in valid_keys()]
        if unknown:
            raise _unknown(unknown, where)
        values.update({k: _coerce(k, v, where) for k, v in given.items()})
    return validate(PPORunConfig(**values))


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
    import yaml

    docs = _docstrings(PPORunConfig)
    lines = ["# rewardlab ppo config (rewardlab ppo --config this.yaml)"]
    for key, value in dataclasses.asdict(config).items():
        lines.append(f"# {docs[key]}")
        lines.append(yaml.safe_dump({key: value}, default_flow_style=True, width=1_000).strip()[1:-1])
    path = Path(folder) / CONFIG_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def help_epilog() -> str:
    """The config keys and their docstrings, for the command's --help."""
    docs = _docstrings(PPORunConfig)
    rows = [f"  --{f.name} ({f.default!r}): {docs[f.name]}" for f in fields(PPORunConfig)]
    return "config keys (in --config YAML or as --key value):\n" + "\n".join(rows).replace("%", "%%")
