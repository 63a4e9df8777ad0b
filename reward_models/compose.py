"""The composed reward: a weighted sum of normalized terms, configured in one YAML file.

    reward(prompt, response) = sum over terms of  weight * normalize(term(prompt, response))

A term is a learned reward model (a ``rewardlab reward train`` folder), a rule from
``reward_models/rules.py``, or any Python function named ``module:function``. Normalization per
term: ``none`` (raw value), ``stats`` (``(raw - mean) / std`` with the statistics the reward model
saved over its training responses) or ``fixed`` (``(raw - shift) / scale`` with your numbers).

YAML schema (every key but ``type`` is optional; unknown keys are errors that list the valid ones)::

    device: cpu              # default device for reward-model terms
    terms:
      - type: reward_model   # a learned reward model
        path: runs/rm        # its folder (relative: to the current directory, else to this file)
        name: helpful        # label in breakdowns (default: the type, numbered if repeated)
        weight: 1.0          # multiplier of the normalized value (default 1.0)
        normalize: stats     # none | stats | fixed (default: stats for reward_model, else none)
        batch_size: 16       # scoring batch size
      - type: length         # a rule: its parameters sit next to type (see docs/reward_design.md)
        min: 20
        max: 400
        weight: 0.5
      - type: callable       # any function f(prompt_messages, response) -> float
        function: mypkg.rewards:politeness
        kwargs: {strict: true}   # keyword arguments passed on every call
        batched: false       # true: f(list_of_prompts, list_of_responses) -> list of floats
        normalize: fixed
        shift: 0.5           # normalized = (raw - shift) / scale
        scale: 0.25

For PPO, wrap it with ``reward_models.ppo_adapter.ComposedRewardForPPO``; for a Gym loop, see
``reward_models.env.TextEnv``.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rewardlab.errors import RewardlabError
from rewardlab.formats import parse_prompt_text
from reward_models.rules import RULES, make_rule, rule_params

NORMALIZATIONS = ("none", "stats", "fixed")
TERM_KEYS = ("name", "type", "weight", "normalize", "shift", "scale")
"""Keys every term accepts; each type adds its own (see ``_TYPE_KEYS`` and the rule classes)."""
_TYPE_KEYS = {
    "reward_model": ("path", "device", "batch_size"),
    "callable": ("function", "kwargs", "batched"),
}
TOP_KEYS = ("terms", "device")

BatchFn = Callable[[list[list[dict]], list[str]], list[float]]


def term_types() -> list[str]:
    """Every valid ``type:``: reward_model, callable and the registered rules."""
    return ["reward_model", "callable", *sorted(RULES)]


@dataclass
class Term:
    """One summand of a composed reward."""

    name: str
    """Label in breakdowns and error messages; unique within a composed reward."""
    fn: BatchFn
    """Raw values of a batch: ``fn(prompts, responses) -> list[float]``."""
    weight: float = 1.0
    """Multiplier applied after normalization."""
    normalize: str = "none"
    """``none``, ``stats`` or ``fixed``; ``shift`` and ``scale`` hold the numbers for the last two."""
    shift: float = 0.0
    """Subtracted from the raw value (the mean, for ``stats``)."""
    scale: float = 1.0
    """Divides the shifted value (the std, for ``stats``); never 0."""
    kind: str = "callable"
    """The term's ``type`` (reward_model, a rule name, callable)."""

    def normalized(self, raw: float) -> float:
        if self.normalize == "none":
            return raw
        return (raw - self.shift) / self.scale


class ComposedReward:
    """A weighted sum of normalized reward terms; see the module docstring for the YAML schema."""

    def __init__(self, terms: list[Term]):
        if not terms:
            raise RewardlabError("a composed reward needs at least one term")
        names = [t.name for t in terms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RewardlabError(f"term names must be unique; repeated: {', '.join(dupes)}")
        self.terms = list(terms)

    # ---- loading ---------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path) -> "ComposedReward":
        """Load a composed reward from a YAML file (schema in the module docstring)."""
        import yaml

        path = Path(path).expanduser()
        if not path.is_file():
            raise RewardlabError(f"{path}: no such reward config file; check the path")
        text = path.read_text(encoding="utf-8")
        try:
            config = yaml.safe_load(text)
            lines = _term_lines(yaml.compose(text))
        except yaml.YAMLError as e:
            raise RewardlabError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
        return cls.from_config(config, base_dir=path.parent, where=str(path), lines=lines)

    @classmethod
    def from_config(
        cls, config: dict, base_dir=None, where: str = "reward config", lines: list[int] | None = None
    ) -> "ComposedReward":
        """Build from a config mapping (what the YAML holds). ``base_dir``: a second place to look
        for relative reward-model paths; ``where`` and ``lines`` only label error messages."""
        if not isinstance(config, dict):
            raise RewardlabError(f"{where}: must be a mapping with a 'terms' list, got {type(config).__name__}")
        _check_keys(config, TOP_KEYS, where)
        specs = config.get("terms")
        if not isinstance(specs, list) or not specs:
            raise RewardlabError(f"{where}: 'terms' must be a non-empty list of terms (each with a 'type')")
        terms, counts = [], {}
        for i, spec in enumerate(specs):
            line = lines[i] if lines and i < len(lines) else None
            at = f"{where}:{line}: term {i + 1}" if line else f"{where}: term {i + 1}"
            term = _build_term(spec, at, base_dir, config.get("device", "cpu"))
            counts[term.name] = counts.get(term.name, 0) + 1
            if "name" not in spec and counts[term.name] > 1:  # second `length` -> `length_2`
                term.name = f"{term.name}_{counts[term.name]}"
            terms.append(term)
        return cls(terms)

    # ---- scoring ---------------------------------------------------------------------------

    def score(self, prompts: list, responses: list[str]) -> list[float]:
        """The composed reward of each (prompt, response); prompts are message lists or texts."""
        return [row["total"] for row in self.breakdowns(prompts, responses)]

    def __call__(self, prompt, response: str) -> float:
        """The composed reward of one pair."""
        return self.score([prompt], [response])[0]

    def breakdown(self, prompt, response: str) -> dict:
        """One pair's reward, term by term::

            {"total": float, "terms": {name: {"type", "raw", "normalized", "weight", "weighted"}}}
        """
        return self.breakdowns([prompt], [response])[0]

    def breakdowns(self, prompts: list, responses: list[str]) -> list[dict]:
        """``breakdown`` for a batch; each term is evaluated once over the whole batch."""
        if isinstance(prompts, (str, dict)) or isinstance(responses, str):
            raise RewardlabError("score() takes lists of prompts and responses; use breakdown() for one pair")
        if len(prompts) != len(responses):
            raise RewardlabError(f"{len(prompts)} prompts but {len(responses)} responses; give one prompt per response")
        messages = [_as_messages(p) for p in prompts]
        responses = [_as_text(r, i) for i, r in enumerate(responses)]
        rows = [{"total": 0.0, "terms": {}} for _ in responses]
        if not responses:
            return rows
        for term in self.terms:
            raws = _call_term(term, messages, responses)
            for i, raw in enumerate(raws):
                value = term.normalized(raw)
                weighted = term.weight * value
                if not math.isfinite(weighted):
                    raise RewardlabError(
                        f"reward term '{term.name}' gave a non-finite value ({weighted}) for row {i} "
                        f"(response {responses[i][:60]!r}); check its normalization and weight"
                    )
                rows[i]["terms"][term.name] = {
                    "type": term.kind, "raw": raw, "normalized": value,
                    "weight": term.weight, "weighted": weighted,
                }
                rows[i]["total"] += weighted
        return rows

    @property
    def names(self) -> list[str]:
        """The term names, in order."""
        return [t.name for t in self.terms]


# --------------------------------------------------------------------------------------------
# Building terms from config
# --------------------------------------------------------------------------------------------


def _check_keys(mapping: dict, valid, where: str) -> None:
    unknown = [k for k in mapping if k not in valid]
    if unknown:
        raise RewardlabError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid: {', '.join(valid)}"
        )


def _number(value, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise RewardlabError(f"{where}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def _build_term(spec, where: str, base_dir, device: str) -> Term:
    if not isinstance(spec, dict) or "type" not in spec:
        raise RewardlabError(f"{where}: each term is a mapping with a 'type' ({', '.join(term_types())})")
    kind = spec["type"]
    if kind not in term_types():
        raise RewardlabError(f"{where}: unknown term type {kind!r}; valid types: {', '.join(term_types())}")
    where = f"{where} ({kind})"
    own = _TYPE_KEYS.get(kind) or tuple(rule_params(RULES[kind]))
    _check_keys(spec, (*TERM_KEYS, *own), where)

    weight = _number(spec.get("weight", 1.0), "weight", where)
    fixed_given = "shift" in spec or "scale" in spec
    default_norm = "stats" if kind == "reward_model" else ("fixed" if fixed_given else "none")
    normalize = spec.get("normalize", default_norm)
    if normalize not in NORMALIZATIONS:
        raise RewardlabError(f"{where}: normalize must be one of {', '.join(NORMALIZATIONS)}, not {normalize!r}")
    if fixed_given and normalize != "fixed":
        raise RewardlabError(f"{where}: shift and scale apply only with normalize: fixed")
    shift = _number(spec.get("shift", 0.0), "shift", where)
    scale = _number(spec.get("scale", 1.0), "scale", where)
    if scale == 0:
        raise RewardlabError(f"{where}: scale must not be 0 (normalized = (raw - shift) / scale)")
    if normalize == "stats" and kind != "reward_model":
        raise RewardlabError(
            f"{where}: normalize: stats needs saved statistics, which only reward_model terms have; "
            "use none or fixed (shift, scale)"
        )

    if kind == "reward_model":
        fn, stats = _reward_model_fn(spec, where, base_dir, device)
        if normalize == "stats":
            if isinstance(stats, RewardlabError):
                raise stats
            shift, scale = stats
    elif kind == "callable":
        fn = _callable_fn(spec, where)
    else:
        params = {k: v for k, v in spec.items() if k not in TERM_KEYS}
        fn = _per_pair(make_rule(kind, params, where))
    name = str(spec.get("name", kind))
    return Term(name=name, fn=fn, weight=weight, normalize=normalize, shift=shift, scale=scale, kind=kind)


def _reward_model_fn(spec: dict, where: str, base_dir, device: str):
    from reward_models.scorer import RewardModelScorer

    if "path" not in spec:
        raise RewardlabError(f"{where}: needs 'path', the folder of a trained reward model")
    path = Path(str(spec["path"])).expanduser()
    if not path.is_absolute() and not path.exists() and base_dir is not None and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    if not path.is_dir():
        raise RewardlabError(f"{where}: reward model folder '{spec['path']}' does not exist; check 'path'")
    batch_size = spec.get("batch_size", 16)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RewardlabError(f"{where}: batch_size must be a positive whole number, got {batch_size!r}")
    try:
        scorer = RewardModelScorer(path, device=str(spec.get("device", device)), batch_size=batch_size)
    except RewardlabError as e:
        raise RewardlabError(f"{where}: {e}") from None
    stats = _saved_stats(scorer, path, where)
    return scorer.score, stats


def _saved_stats(scorer, path: Path, where: str) -> tuple[float, float] | RewardlabError:
    """(mean, std) the reward model saved over its training responses, or the error to raise if a
    term asks for ``normalize: stats`` without them (none and fixed need no statistics)."""
    try:
        from reward_models.scorer import STATS_FILE
    except ImportError:  # pragma: no cover - older scorer
        STATS_FILE = "reward_stats.json"
    stats = getattr(scorer, "stats", None) or {}
    mean, std = stats.get("mean"), stats.get("std")
    ok = all(isinstance(v, numbers.Real) and math.isfinite(v) for v in (mean, std))
    if not ok or std <= 0 or not (path / STATS_FILE).is_file():
        return RewardlabError(
            f"{where}: {path} has no usable reward statistics ({STATS_FILE} with mean and std > 0); "
            "retrain it with `rewardlab reward train`, or set normalize: none or fixed"
        )
    return float(mean), float(std)


def _per_pair(fn: Callable[[list[dict], str], float]) -> BatchFn:
    return lambda prompts, responses: [fn(p, r) for p, r in zip(prompts, responses)]


def load_function(ref: str, where: str = "callable") -> Callable:
    """Import ``module:function`` (``function`` may be dotted, ``Class.method``)."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise RewardlabError(f"{where}: function must be 'module:function' (e.g. mypkg.rewards:polite), got {ref!r}")
    module_name, attr = ref.split(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardlabError(f"{where}: cannot import module '{module_name}' ({e}); check the name and PYTHONPATH") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardlabError(f"{where}: module '{module_name}' has no '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardlabError(f"{where}: '{ref}' is not callable")
    return obj


def _callable_fn(spec: dict, where: str) -> BatchFn:
    if "function" not in spec:
        raise RewardlabError(f"{where}: needs 'function', as 'module:function'")
    fn = load_function(spec["function"], where)
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise RewardlabError(f"{where}: kwargs must be a mapping of keyword arguments")
    if kwargs:
        fn = functools.partial(fn, **kwargs)
    if not spec.get("batched", False):
        return _per_pair(fn)

    def batched(prompts, responses):
        out = list(fn(prompts, responses))
        if len(out) != len(responses):
            raise RewardlabError(f"{where}: batched function returned {len(out)} values for {len(responses)} responses")
        return out

    return batched


def _call_term(term: Term, messages: list[list[dict]], responses: list[str]) -> list[float]:
    try:
        values = term.fn(messages, responses)
    except RewardlabError:
        raise
    except Exception as e:
        raise RewardlabError(f"reward term '{term.name}' failed: {type(e).__name__}: {e}") from e
    out = []
    for i, v in enumerate(values):
        if hasattr(v, "item"):  # numpy / torch scalars
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise RewardlabError(f"reward term '{term.name}' returned {v!r} for row {i}; it must return a number")
        v = float(v)
        if not math.isfinite(v):
            raise RewardlabError(
                f"reward term '{term.name}' returned a non-finite value ({v}) for row {i} "
                f"(response {responses[i][:60]!r}); fix the term or drop it"
            )
        out.append(v)
    return out


def _as_messages(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return parse_prompt_text(prompt)
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return prompt
    if hasattr(prompt, "messages"):  # a PromptRecord
        return prompt.messages
    raise RewardlabError(f"a prompt must be text or a list of {{role, content}} messages, got {prompt!r:.80}")


def _as_text(response: Any, i: int) -> str:
    if not isinstance(response, str):
        raise RewardlabError(f"response {i} must be text, got {type(response).__name__}")
    return response


def _term_lines(node) -> list[int]:
    """1-based line of each item of the top-level 'terms' list in a composed YAML node."""
    try:
        for key, value in node.value:
            if key.value == "terms":
                return [item.start_mark.line + 1 for item in value.value]
    except (AttributeError, TypeError):
        pass
    return []
