"""The reward-model training config: one documented dataclass, loaded from YAML plus overrides.

Every field has a one-line docstring (what it does, its unit); it is also the field's ``--help``.
A run is ``defaults < YAML file (--config run.yaml) < command-line --key value``; unknown keys in
either place are an error that lists the valid ones. The resolved config is saved next to the
model as ``reward_config.yaml``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from rewardlab.errors import RewardlabError

CONFIG_FILE = "reward_config.yaml"


def _docstrings(cls) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body, docs = tree.body[0].body, {}
    for node, nxt in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def documented(cls):
    """Copy each field's docstring into its metadata, where HfArgumentParser finds its --help."""
    docs = _docstrings(cls)
    for f in fields(cls):
        if f.name not in docs:
            raise TypeError(f"{cls.__name__}.{f.name} has no docstring")
        f.metadata = types.MappingProxyType({**f.metadata, "help": docs[f.name].replace("%", "%%")})
    return cls


@documented
@dataclass
class RewardTrainConfig:
    """How ``rewardlab reward train`` trains a reward model (TRL RewardTrainer underneath)."""

    model: str = "all-minilm-l6-v2"
    """Backbone: an alias (all-minilm-l6-v2, smollm2-135m), a local model folder or a hub id."""
    max_length: int = 128
    """Longest prompt+reply in tokens; longer pairs are cut (prompt from the left), never dropped."""
    style: str = "auto"
    """Text layout: auto (chat template if the tokenizer has one, else explicit), conversational, explicit."""
    lora: bool = False
    """Train LoRA adapters plus the score head instead of all weights (merged into the saved model)."""
    lora_r: int = 16
    """LoRA rank (adapter width, in dimensions)."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_target_modules: list[str] | None = None
    """Module names LoRA adapts (e.g. q_proj v_proj); empty: peft's default for the architecture."""
    learning_rate: float = 5e-5
    """Peak learning rate of AdamW (per step, after warmup)."""
    epochs: float = 3.0
    """Passes over the training pairs (fractions allowed); max_steps overrides it."""
    batch_size: int = 16
    """Preference pairs per optimizer micro-step (each pair is two sequences)."""
    gradient_accumulation_steps: int = 1
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


def _unknown(keys, where: str) -> RewardlabError:
    return RewardlabError(
        f"unknown config key{'s' if len(keys) > 1 else ''} {', '.join(map(repr, keys))} in {where}; "
        f"valid keys: {', '.join(valid_keys())}"
    )


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    """A YAML value as the field's type (YAML reads 1e-4 as text, for instance)."""
    # From the annotations: HfArgumentParser rewrites Field.type (drops the None of Optional).
    kind, optional = get_type_hints(RewardTrainConfig)[f.name], False
    if get_origin(kind) in (Union, types.UnionType):
        args = [a for a in get_args(kind) if a is not type(None)]
        optional, kind = True, args[0]
    if optional and isinstance(value, str) and value.strip().lower() in ("null", "none", "~", ""):
        value = None
    if value is None:
        if optional:
            return None
        raise RewardlabError(f"{where}: '{f.name}' cannot be null")
    try:
        if get_origin(kind) is list:
            items = value if isinstance(value, list) else str(value).replace(",", " ").split()
            return [str(v) for v in items] or None
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "1", "on"):
                return True
            if text in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if kind is int:
            return int(float(value)) if isinstance(value, str) else int(value)
        return kind(value)
    except (TypeError, ValueError):
        raise RewardlabError(f"{where}: '{f.name}' must be {getattr(kind, '__name__', kind)}, got {value!r}") from None


def _parse_overrides(overrides: list[str]) -> dict[str, str | None]:
    """``["--key", "value", "--flag", "--k=v"]`` -> {key: text}; a bare flag means true."""
    out, i = {}, 0
    while i < len(overrides):
        token = overrides[i]
        if not token.startswith("--") or len(token) == 2:
            raise RewardlabError(f"unexpected argument {token!r}; give config overrides as --key value")
        key, eq, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = overrides[i + 1] if i + 1 < len(overrides) else None
            if nxt is not None and not (nxt.startswith("--") and len(nxt) > 2):
                value, i = nxt, i + 1
            else:
                value = "true"
        out[key] = value
        i += 1
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RewardTrainConfig:
    """Defaults, then the YAML file ``path``, then ``overrides`` (``--key value`` strings or a dict).

    Values go through ``transformers.HfArgumentParser`` (types, --help); unknown keys raise a
    RewardlabError that lists the valid ones.
    """
    from transformers import HfArgumentParser

    by_name = {f.name: f for f in fields(RewardTrainConfig)}
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
        unknown = [k for k in loaded if k not in by_name]
        if unknown:
            raise _unknown(unknown, str(path))
        values.update({k: _coerce(by_name[k], v, str(path)) for k, v in loaded.items()})
    if overrides:
        given = dict(overrides) if isinstance(overrides, dict) else _parse_overrides(list(overrides))
        unknown = [k for k in given if k not in by_name]
        if unknown:
            raise _unknown(unknown, "the command line" if not isinstance(overrides, dict) else "overrides")
        values.update({k: _coerce(by_name[k], v, "command line") for k, v in given.items()})
    parser = HfArgumentParser(RewardTrainConfig)
    parser.set_defaults(**values)
    (config,) = parser.parse_args_into_dataclasses(args=[])
    return validate(config)


def validate(config: RewardTrainConfig) -> RewardTrainConfig:
    """Check ranges; raise a one-line RewardlabError naming the key."""
    checks = [
        (config.max_length >= 32, "max_length must be at least 32 tokens"),
        (config.lora_r >= 1, "lora_r must be at least 1"),
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
    ]
    for ok, message in checks:
        if not ok:
            raise RewardlabError(f"bad config: {message}")
    return config


def save_config(config: RewardTrainConfig, folder: Path) -> Path:
    """Write ``reward_config.yaml`` (every key, with its docstring as a comment) into ``folder``."""
    import yaml

    docs = _docstrings(RewardTrainConfig)
    lines = ["# rewardlab reward train config (rewardlab reward train --config this.yaml)"]
    for key, value in dataclasses.asdict(config).items():
        lines.append(f"# {docs[key]}")
        lines.append(yaml.safe_dump({key: value}, default_flow_style=True, width=1_000).strip()[1:-1])
    path = Path(folder) / CONFIG_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def help_epilog() -> str:
    """The config keys and their docstrings, for the command's --help."""
    docs = _docstrings(RewardTrainConfig)
    rows = [f"  --{f.name} ({f.default!r}): {docs[f.name]}" for f in fields(RewardTrainConfig)]
    return "config keys (in --config YAML or as --key value):\n" + "\n".join(rows)
