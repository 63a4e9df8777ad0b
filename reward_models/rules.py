"""Rule rewards: small, documented scoring functions of a (prompt, response) pair.

Every rule is a class whose instances are called as ``rule(prompt, response) -> float``, where
``prompt`` is the conversation (a list of ``{"role", "content"}`` dicts) and ``response`` the reply
text. Each docstring states the range and what 0 means. Rules are registered by name (``RULES``),
which is what ``type:`` refers to in a composed-reward YAML (see ``reward_models/compose.py``).

Text is NFC-normalized before matching, and "words" are unicode-aware (see ``text_tokens``): a run
of letters/digits is one word ("café", "naïve"), each CJK ideograph or kana is one word (Chinese and
Japanese use no spaces), and each emoji or other symbol is one word; punctuation is not a word.
"""

from __future__ import annotations

import inspect
import json
import re
import unicodedata
from typing import Any

from rewardlab.errors import RewardlabError

RULES: dict[str, type] = {}
"""Rule classes by the name a YAML ``type:`` uses."""


def register(name: str):
    """Class decorator: make a rule available to composed rewards as ``type: <name>``."""

    def wrap(cls: type) -> type:
        RULES[name] = cls
        cls.rule_name = name
        return cls

    return wrap


def make_rule(name: str, params: dict[str, Any], where: str = "rule"):
    """Build the rule registered as ``name`` from keyword ``params``; errors list the valid ones."""
    if name not in RULES:
        raise RewardlabError(f"{where}: unknown rule '{name}'; valid rules: {', '.join(sorted(RULES))}")
    cls = RULES[name]
    valid = rule_params(cls)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise RewardlabError(
            f"{where}: unknown parameter(s) {', '.join(unknown)} for rule '{name}'; "
            f"valid: {', '.join(valid) or 'none'}"
        )
    try:
        return cls(**params)
    except TypeError as e:  # a missing required parameter
        raise RewardlabError(f"{where}: rule '{name}': {e}") from None


def rule_params(cls: type) -> list[str]:
    """The keyword parameters a rule class accepts."""
    sig = inspect.signature(cls.__init__)
    return [p for p in sig.parameters if p != "self"]


# --------------------------------------------------------------------------------------------
# Unicode-aware words
# --------------------------------------------------------------------------------------------

# Scripts written without spaces: every character is a word (CJK ideographs, kana, Thai is left
# to \w runs because it needs a dictionary to split).
_CJK = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\U00020000-\U0002fa1f"
)
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]", re.UNICODE)


def normalize_text(text: str) -> str:
    """NFC form, so "e" + combining accent and "é" are the same text."""
    return unicodedata.normalize("NFC", text)


def text_tokens(text: str) -> list[str]:
    """Unicode-aware words of ``text``, lower-cased (casefold): letter/digit runs, single CJK
    characters, single symbols and emoji; punctuation and joiners are dropped."""
    out = []
    for tok in _TOKEN.findall(normalize_text(text).casefold()):
        if len(tok) == 1 and not tok.isalnum():
            cat = unicodedata.category(tok)
            if cat[0] in "PZC" or cat in ("Mn", "Mc", "Me", "Sk"):
                continue  # punctuation, separators, controls/joiners, combining marks, modifiers
        out.append(tok)
    return out


def _count(text: str, unit: str) -> int:
    return len(normalize_text(text)) if unit == "chars" else len(text_tokens(text))


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise RewardlabError(f"{what} must be one of {', '.join(choices)}, not {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


@register("length")
class Length:
    """Keep the response length inside a target range.

    Range ``[floor, 0]``: 0 inside ``[min, max]`` (either bound may be omitted). Outside it, the
    penalty grows with the relative distance ``d`` to the nearest bound (``(min - n) / min`` below,
    ``(n - max) / max`` above): ``-d`` for ``shape: linear``, ``-d**2`` for ``shape: quadratic``,
    never below ``floor``. ``unit``: ``chars`` (unicode characters) or ``words`` (see text_tokens).
    """

    def __init__(
        self,
        min: int | None = None,  # noqa: A002 - the YAML key users write
        max: int | None = None,  # noqa: A002
        unit: str = "chars",
        shape: str = "linear",
        floor: float = -1.0,
    ):
        if min is None and max is None:
            raise RewardlabError("length rule needs min, max or both")
        if min is not None and min < 0 or max is not None and max < 1:
            raise RewardlabError("length rule: min must be >= 0 and max >= 1")
        if min is not None and max is not None and min > max:
            raise RewardlabError(f"length rule: min ({min}) is above max ({max})")
        self.min, self.max, self.floor = min, max, float(floor)
        self.unit = _check_choice(unit, ("chars", "words"), "length unit")
        self.shape = _check_choice(shape, ("linear", "quadratic"), "length shape")

    def __call__(self, prompt: list[dict], response: str) -> float:
        n = _count(response, self.unit)
        if self.min and n < self.min:
            d = (self.min - n) / self.min
        elif self.max is not None and n > self.max:
            d = (n - self.max) / self.max
        else:
            return 0.0
        penalty = d if self.shape == "linear" else d * d
        return float(max(self.floor, -penalty))


def _weighted_patterns(value, what: str) -> list[tuple[str, float]]:
    """Patterns given as a list of strings (weight 1), a list of {pattern, weight}, or a mapping."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        value = [{"pattern": k, "weight": v} for k, v in value.items()]
    out = []
    for item in value:
        if isinstance(item, str):
            out.append((item, 1.0))
        elif isinstance(item, dict) and "pattern" in item and set(item) <= {"pattern", "weight"}:
            out.append((str(item["pattern"]), float(item.get("weight", 1.0))))
        else:
            raise RewardlabError(f"{what}: each entry is a pattern string or {{pattern, weight}}, got {item!r:.80}")
    return out


@register("regex")
class Regex:
    """Regular expressions the response must match, or must not match.

    Range ``[-(sum of weights), 0]``: 0 when every ``must_match`` pattern is found and no
    ``must_not_match`` pattern is; each violated pattern subtracts its weight (default 1). Patterns
    are Python ``re`` syntax, searched anywhere in the response; ``ignore_case`` applies to all.
    """

    def __init__(self, must_match=None, must_not_match=None, ignore_case: bool = False):
        flags = re.UNICODE | re.MULTILINE | (re.IGNORECASE if ignore_case else 0)
        self.must, self.must_not = [], []
        for key, value, target in (
            ("must_match", must_match, self.must), ("must_not_match", must_not_match, self.must_not)
        ):
            for pattern, weight in _weighted_patterns(value, f"regex {key}"):
                try:
                    target.append((re.compile(pattern, flags), weight))
                except re.error as e:
                    raise RewardlabError(f"regex {key}: invalid pattern {pattern!r}: {e}") from None
        if not self.must and not self.must_not:
            raise RewardlabError("regex rule needs must_match and/or must_not_match patterns")

    def __call__(self, prompt: list[dict], response: str) -> float:
        text = normalize_text(response)
        missing = sum(w for p, w in self.must if not p.search(text))
        present = sum(w for p, w in self.must_not if p.search(text))
        return -float(missing + present)


_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)\n?```", re.DOTALL)
_TERMINAL = set(".!?…。！？．｡‼⁇⁈⁉")
_CLOSERS = set("\"')]}»”’」』）】〉》*_")


@register("format")
class Format:
    """Check the response's format.

    Range ``[0, 1]``; 1 means the format holds. ``kind``:
    - ``json``: the response (or the body of its one ```json fence) is valid JSON; with ``keys``, it
      must be an object, and the score is the fraction of ``keys`` present (1 = all).
    - ``punctuation``: ends with sentence-final punctuation (``.!?…`` and CJK ``。！？``), closing
      quotes or brackets after it allowed; 0 otherwise.
    - ``code_block``: contains a fenced code block (```...```), in ``language`` if given.
    """

    def __init__(self, kind: str, keys: list[str] | None = None, language: str | None = None):
        self.kind = _check_choice(kind, ("json", "punctuation", "code_block"), "format kind")
        self.keys = list(keys or [])
        self.language = language.lower() if language else None

    def __call__(self, prompt: list[dict], response: str) -> float:
        text = normalize_text(response).strip()
        if self.kind == "json":
            return self._json(text)
        if self.kind == "punctuation":
            body = text.rstrip("".join(_CLOSERS) + " \t\n")
            return 1.0 if body and body[-1] in _TERMINAL else 0.0
        for lang, _body in _FENCE.findall(text):
            if self.language is None or lang.lower() == self.language:
                return 1.0
        return 0.0

    def _json(self, text: str) -> float:
        fenced = _FENCE.fullmatch(text)
        if fenced:
            text = fenced.group(2)
        try:
            value = json.loads(text)
        except ValueError:
            return 0.0
        if not self.keys:
            return 1.0
        if not isinstance(value, dict):
            return 0.0
        return sum(k in value for k in self.keys) / len(self.keys)


@register("repetition")
class Repetition:
    """Penalize repeated n-grams, the signature of degenerate loops ("the the the ...").

    Range ``[-1, 0]``: minus the repeated n-gram ratio ``1 - unique / total`` over the response's
    word n-grams (unicode-aware words; CJK characters count one each, so "我爱你我爱你" repeats).
    0 means no n-gram occurs twice (and for responses shorter than ``n`` words).
    """

    def __init__(self, n: int = 3):
        if int(n) < 1:
            raise RewardlabError(f"repetition rule: n must be >= 1, not {n}")
        self.n = int(n)

    def __call__(self, prompt: list[dict], response: str) -> float:
        tokens = text_tokens(response)
        grams = [tuple(tokens[i : i + self.n]) for i in range(len(tokens) - self.n + 1)]
        if not grams:
            return 0.0
        return len(set(grams)) / len(grams) - 1.0


def _keyword_pattern(word: str) -> re.Pattern:
    """Case-insensitive match of ``word`` on word boundaries; edges that are CJK characters,
    symbols or emoji need no boundary (those scripts do not separate words by spaces)."""
    word = normalize_text(word).casefold().strip()
    if not word:
        raise RewardlabError("keywords rule: empty keyword")
    cjk = re.compile(f"[{_CJK}]")

    def needs_boundary(ch: str) -> bool:
        return ch.isalnum() and not cjk.match(ch)

    left = r"(?<!\w)" if needs_boundary(word[0]) else ""
    right = r"(?!\w)" if needs_boundary(word[-1]) else ""
    body = r"\s+".join(re.escape(part) for part in word.split())
    return re.compile(left + body + right, re.UNICODE)


@register("keywords")
class Keywords:
    """Reward or penalize keywords (case-insensitive, whole words, unicode).

    Range ``[-penalty * len(penalize), bonus * len(reward)]``: ``+bonus`` for each ``reward``
    keyword present, ``-penalty`` for each ``penalize`` keyword present (each counted once, however
    often it occurs); 0 when none is present. "cat" does not match "category"; CJK keywords match
    inside running text; accents matter ("resume" is not "résumé").
    """

    def __init__(
        self, reward: list[str] | None = None, penalize: list[str] | None = None,
        bonus: float = 1.0, penalty: float = 1.0,
    ):
        if not reward and not penalize:
            raise RewardlabError("keywords rule needs reward and/or penalize lists")
        for key, value in (("reward", reward), ("penalize", penalize)):
            if isinstance(value, str) or (value is not None and not isinstance(value, (list, tuple))):
                raise RewardlabError(f"keywords rule: {key} must be a list of words, got {value!r:.80}")
        self.reward = [_keyword_pattern(w) for w in reward or []]
        self.penalize = [_keyword_pattern(w) for w in penalize or []]
        self.bonus, self.penalty = float(bonus), float(penalty)

    def __call__(self, prompt: list[dict], response: str) -> float:
        text = normalize_text(response).casefold()
        good = sum(1 for p in self.reward if p.search(text))
        bad = sum(1 for p in self.penalize if p.search(text))
        return good * self.bonus - bad * self.penalty
