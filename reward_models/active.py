"""Which pairs to label next: rank unlabelled pairs by how much a label would teach the reward model.

Everything here works on *cached frozen features* (``reward_models.probe.head_features``: exactly
what a reward model's score layer reads), so a refresh is a few small logistic fits, not training:

1. ``fit_heads``: one L2 Bradley-Terry head (``probe.fit_bradley_terry``, L2 chosen by CV) on the
   labels so far, plus ``ensemble`` heads refitted on bootstrap resamples of those labels (same L2);
2. ``rank``: a priority per candidate pair (higher = label it sooner), by strategy:

   * ``random``: no model; the caller keeps its own order (the baseline);
   * ``margin`` (uncertainty): ``-|r(a) - r(b)|`` under the main head: the pairs the current reward
     model is least sure about;
   * ``disagreement`` (uncertainty): the share of bootstrap heads that disagree with the majority
     on which reply wins, plus the spread of their P(a preferred): pairs where reasonable models of
     the labels so far disagree;
   * ``diversity``: spreads labels across prompts: every prompt's most uncertain pair (by margin)
     comes before any prompt's second, prompts with fewer labels first.

Until ``min_labels`` labels of both orientations exist there is no model; ``rank`` then returns
``None`` and callers fall back to the baseline order.

``Featurizer`` turns (prompt messages, reply) into those features with a reward backbone (default
all-MiniLM-L6-v2, the ``reward train`` default), tokenized by ``scorer.encode`` as training does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from reward_models.probe import L2_GRID, BradleyTerryFit, fit_bradley_terry
from rewardlab.workspace import STRATEGIES


@dataclass
class Heads:
    """The main head and the bootstrap ensemble fitted on the labels so far."""

    main: BradleyTerryFit
    ensemble: list[BradleyTerryFit]


def fit_heads(chosen: torch.Tensor, rejected: torch.Tensor, ensemble: int = 5, seed: int = 0,
              l2_grid=L2_GRID, folds: int = 5) -> Heads:
    """Main head with CV-chosen L2 on all labels, and ``ensemble`` bootstrap heads at that L2."""
    main = fit_bradley_terry(chosen, rejected, l2_grid=l2_grid, folds=folds, seed=seed)
    n = len(chosen)
    heads = []
    gen = torch.Generator().manual_seed(seed)
    for _ in range(ensemble):
        idx = torch.randint(0, n, (n,), generator=gen)
        heads.append(fit_bradley_terry(chosen[idx], rejected[idx], l2_grid=(main.l2,), seed=seed))
    return Heads(main=main, ensemble=heads)


def margins(head: BradleyTerryFit, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """r(a) - r(b) per pair (rows of a and b are the two replies' features)."""
    return head.score(a) - head.score(b)


def disagreement(heads: list[BradleyTerryFit], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per pair: the share of heads against the majority's sign, plus the std across heads of
    P(a preferred) = sigmoid(r(a) - r(b)) (query by committee; large only where heads are unsure)."""
    m = torch.stack([margins(h, a, b) for h in heads])  # (heads, pairs)
    spread = torch.sigmoid(m).std(0, unbiased=False)
    positive = (m > 0).float().mean(0)
    minority = torch.minimum(positive, 1 - positive)
    return minority + spread


def spread_over_prompts(uncertainty: torch.Tensor, prompt_ids: list, labels_per_prompt: dict | None = None,
                        ) -> torch.Tensor:
    """Priorities that take every prompt's best pair before any prompt's second (``diversity``).

    Within one round (the k-th best pair of each prompt), prompts with fewer labels so far come
    first, then higher ``uncertainty``.
    """
    labels_per_prompt = labels_per_prompt or {}
    by_prompt: dict = {}
    for i, p in enumerate(prompt_ids):
        by_prompt.setdefault(p, []).append(i)
    keyed = []
    for p, rows in by_prompt.items():
        rows.sort(key=lambda i: -float(uncertainty[i]))
        for rank_in_prompt, i in enumerate(rows):
            keyed.append((rank_in_prompt + labels_per_prompt.get(p, 0), -float(uncertainty[i]), i))
    keyed.sort()
    out = torch.empty(len(prompt_ids))
    for position, (_, _, i) in enumerate(keyed):
        out[i] = float(len(keyed) - position)
    return out


def rank(strategy: str, heads: Heads | None, a: torch.Tensor, b: torch.Tensor, prompt_ids: list | None = None,
         labels_per_prompt: dict | None = None) -> torch.Tensor | None:
    """Priority per candidate pair (higher first), or None when the strategy has nothing to add."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if strategy == "random":
        return None
    if strategy == "diversity":
        uncertainty = (torch.zeros(len(a)) if heads is None else -margins(heads.main, a, b).abs())
        return spread_over_prompts(uncertainty, prompt_ids or list(range(len(a))), labels_per_prompt)
    if heads is None:
        return None
    if strategy == "margin":
        return -margins(heads.main, a, b).abs()
    return disagreement(heads.ensemble or [heads.main], a, b)


FEATURE_MAX_LENGTH = 128
"""Tokens per (prompt, reply) the cached features see (the reply is kept, the prompt cut from the left)."""


def featurizer_name(backbone: str, max_length: int = FEATURE_MAX_LENGTH) -> str:
    """The key cached features are stored under: a change of backbone or length never mixes caches."""
    return f"{backbone}@{max_length}"


class Featurizer:
    """Frozen reward-backbone features of (prompt messages, reply), as the score layer reads them."""

    def __init__(self, backbone: str = "all-minilm-l6-v2", max_length: int = FEATURE_MAX_LENGTH, batch_size: int = 32):
        import transformers

        from reward_models.scorer import RewardFormat, resolve_style
        from reward_models.train import resolve_backbone
        from rewardlab.models import load_sequence_classifier, load_tokenizer

        path = resolve_backbone(backbone)
        self.name = featurizer_name(backbone, max_length)
        self.tokenizer = load_tokenizer(path, padding_side="right")
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the untrained score head is expected (unused)
        try:
            self.model = load_sequence_classifier(path, tokenizer=self.tokenizer)
        finally:
            transformers.logging.set_verbosity(verbosity)
        self.format = RewardFormat(style=resolve_style(self.tokenizer, "auto"), max_length=max_length)
        self.batch_size = batch_size

    def __call__(self, items: list[tuple[list[dict], str]], progress=None) -> torch.Tensor:
        """One feature row per (messages, reply)."""
        from reward_models.probe import head_features
        from reward_models.scorer import encode

        ids = [encode(self.tokenizer, self.format, messages, reply)[0] for messages, reply in items]
        return head_features(self.model, ids, self.tokenizer.pad_token_id, self.batch_size, progress)


def choose_batch(priority: torch.Tensor | None, candidates: list[int], k: int, rng: random.Random) -> list[int]:
    """The ``k`` candidates with the highest priority (ties and ``None``: random order)."""
    order = list(candidates)
    rng.shuffle(order)
    if priority is not None:
        order.sort(key=lambda i: -float(priority[i]))
    return order[:k]


def priorities(strategy: str, chosen: torch.Tensor, rejected: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               prompt_ids: list, labels_per_prompt: dict | None = None, ensemble: int = 5, min_labels: int = 10,
               seed: int = 0) -> torch.Tensor | None:
    """The app's refresh in one call: fit the heads on the labels (when there are ``min_labels``)
    and rank the candidate pairs (a, b) for ``strategy``; None means "keep the baseline order"."""
    heads = None
    if strategy != "random" and len(chosen) >= min_labels:
        heads = fit_heads(chosen, rejected, ensemble=ensemble if strategy == "disagreement" else 0, seed=seed)
    return rank(strategy, heads, a, b, prompt_ids, labels_per_prompt)
