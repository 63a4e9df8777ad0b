"""Assignment strategies on constructed features (reward_models/active.py): each picks what it should."""

from __future__ import annotations

import random

import pytest
import torch

from reward_models.active import (
    choose_batch,
    disagreement,
    fit_heads,
    priorities,
    rank,
    spread_over_prompts,
)
from reward_models.probe import BradleyTerryFit


def _labels(n=60, seed=0):
    """Replies whose reward is feature 0 (feature 1 is noise): chosen has the larger feature 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, 2, generator=g)
    a, b = x[:n], x[n:]
    first = a[:, 0] > b[:, 0]
    chosen = torch.where(first[:, None], a, b)
    rejected = torch.where(first[:, None], b, a)
    return chosen, rejected


def test_margin_picks_the_smallest_margin_pair():
    heads = fit_heads(*_labels(), ensemble=0)
    assert heads.main.weight[0] > 5 * heads.main.weight[1].abs()  # it learned the rule
    # Candidates differ along feature 0 by 2.0, 0.05 (nearly a tie), -1.0 and 0.5.
    a = torch.tensor([[2.0, 0.0], [0.05, 0.3], [-1.0, 0.0], [0.5, -0.2]])
    b = torch.zeros(4, 2)
    p = rank("margin", heads, a, b)
    assert int(p.argmax()) == 1
    assert choose_batch(p, [0, 1, 2, 3], 2, random.Random(0)) == [1, 3]


def test_disagreement_picks_the_pair_the_heads_split_on():
    # Three heads agree on feature 0 and split on feature 1 (one reads it backwards).
    heads = [BradleyTerryFit(torch.tensor(w), 0.0, 1e-3, None, 1.0)
             for w in ([1.0, 1.0], [1.0, 0.8], [1.0, -1.0])]
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.0]])  # pair 1 differs along the disputed feature
    b = torch.zeros(3, 2)
    d = disagreement(heads, a, b)
    assert int(d.argmax()) == 1 and float(d[0]) == pytest.approx(float(d[2]))


def test_disagreement_with_bootstrap_heads_prefers_the_ambiguous_region():
    chosen, rejected = _labels(n=40, seed=1)
    heads = fit_heads(chosen, rejected, ensemble=8, seed=0)
    assert len(heads.ensemble) == 8 and len({round(float(h.weight[1]), 6) for h in heads.ensemble}) > 1
    a = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.01, 2.0]])  # pair 1: near-tie on the rule, large on the noise feature
    p = rank("disagreement", heads, a, b)
    assert float(p[1]) > float(p[0])


def test_diversity_spreads_over_prompts():
    # Prompt "p" has four very uncertain pairs; "q" and "r" one fairly certain pair each.
    uncertainty = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1, 0.2])
    prompts = ["p", "p", "p", "p", "q", "r"]
    pr = spread_over_prompts(uncertainty, prompts)
    top3 = torch.argsort(pr, descending=True)[:3].tolist()
    assert {prompts[i] for i in top3} == {"p", "q", "r"}
    assert top3[0] == 0  # within one round, more uncertain first
    # A prompt that already has labels waits until the others caught up.
    pr = spread_over_prompts(uncertainty, prompts, {"q": 2})
    order = torch.argsort(pr, descending=True).tolist()
    assert order.index(4) > order.index(1)
    # Without labels there is no model, yet diversity still ranks; margin keeps the baseline.
    a = b = torch.zeros(6, 2)
    empty = torch.zeros((0, 2))
    assert priorities("diversity", empty, empty, a, b, prompts) is not None
    assert priorities("margin", empty, empty, a, b, prompts) is None


def test_random_keeps_the_baseline_and_unknown_is_refused():
    heads = fit_heads(*_labels(), ensemble=0)
    assert rank("random", heads, torch.zeros(2, 2), torch.zeros(2, 2)) is None
    with pytest.raises(ValueError, match="unknown strategy"):
        rank("entropy", heads, torch.zeros(2, 2), torch.zeros(2, 2))
