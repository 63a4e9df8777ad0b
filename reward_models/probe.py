"""A reward head fitted on frozen features: the warm start of ``reward train`` and a cheap reward of its own.

Fine-tuning a reward model from a random score head wastes the first epoch teaching the head what
the backbone already knows, and on small noisy preference sets (a few thousand pairs) it often never
gets past that (the stock TRL recipe scored chance on HH harmless here). A linear probe is the
classic remedy (LP-FT, Kumar et al. 2022): run the frozen backbone once over the training sequences,
take exactly the features its score head reads, and fit the head by L2-regularized Bradley-Terry
logistic regression on (chosen - rejected) feature differences, choosing the regularization by
cross-validation. The fitted head is written into the model before ``RewardTrainer`` starts, so
training begins from a reward that already ranks pairs, and its scale is calibrated.

The same two pieces serve label-efficient assignment: ``head_features`` caches features once and
``fit_bradley_terry`` refits a head on new labels in milliseconds.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
"""Candidate L2 strengths (per unit-variance feature); the best by cross-validated accuracy wins."""


@dataclass
class BradleyTerryFit:
    """A linear reward ``r(x) = weight . x + bias`` over raw (unstandardized) features."""

    weight: torch.Tensor
    bias: float
    l2: float
    cv_accuracy: float | None
    train_accuracy: float

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.weight + self.bias


def head_module(model) -> torch.nn.Module:
    for name in ("score", "classifier"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(f"{type(model).__name__} has no 'score' or 'classifier' head")


def _final_linear(head: torch.nn.Module) -> torch.nn.Linear:
    if isinstance(head, torch.nn.Linear):
        return head
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"the score head {type(head).__name__} has no linear layer")
    return linears[-1]


@torch.inference_mode()
def head_features(model, sequences: list[list[int]], pad_id: int, batch_size: int = 32,
                  progress=None) -> torch.Tensor:
    """What the model's final score layer reads, one row per token-id sequence (frozen, eval mode).

    Sequences are right-padded in length-sorted batches; for heads applied per position (causal
    LMs) the row is the last real token's, which is where ``*ForSequenceClassification`` reads.
    """
    linear = _final_linear(head_module(model))
    captured: list[torch.Tensor] = []
    hook = linear.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    try:
        for lo in range(0, len(order), batch_size):
            idx = order[lo: lo + batch_size]
            width = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
                mask[row, : len(sequences[i])] = 1
            captured.clear()
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
            feats = captured[-1].float().cpu()
            if feats.dim() == 3:  # per-position head: take the last real token
                feats = feats[torch.arange(len(idx)), mask.sum(-1) - 1]
            for row, i in enumerate(idx):
                out[i] = feats[row]
            if progress is not None:
                progress(len(idx))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.stack(out)  # type: ignore[arg-type]


def _fit(x: torch.Tensor, l2: float, weights: torch.Tensor | None = None, max_iter: int = 200) -> torch.Tensor:
    """Weights minimizing mean softplus(-x w) + l2 |w|^2 (x: standardized chosen-minus-rejected rows)."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    x = x.double()
    sample_w = None if weights is None else weights.double() / weights.double().mean()
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        losses = torch.nn.functional.softplus(-(x @ w))
        loss = (losses if sample_w is None else losses * sample_w).mean() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def _accuracy(x: torch.Tensor, w: torch.Tensor) -> float:
    m = x.double() @ w.double()
    return float(((m > 0).double() + 0.5 * (m == 0).double()).mean())


def fit_bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, l2_grid=L2_GRID, folds: int = 5,
                      seed: int = 0, margins: torch.Tensor | None = None) -> BradleyTerryFit:
    """Fit ``r(x) = w.x + b`` so that r(chosen) > r(rejected), L2 chosen by ``folds``-fold CV.

    Features are standardized by the mean and std over all rows (so one L2 suits every backbone);
    the returned weight works on raw features, and ``bias`` centres the rewards of the fitted
    replies on zero. ``margins`` (optional, >= 0) weight pairs the way a stronger label should count.
    """
    if chosen.shape != rejected.shape or chosen.dim() != 2 or len(chosen) == 0:
        raise ValueError("chosen and rejected must be two (n, d) feature matrices with n >= 1")
    both = torch.cat([chosen, rejected]).double()
    mu, sd = both.mean(0), both.std(0, unbiased=False).clamp_min(1e-6)
    x = (chosen.double() - rejected.double()) / sd
    weights = None if margins is None else (1.0 + margins.double().clamp_min(0))
    n = len(x)
    grid = list(l2_grid)
    cv = None
    if len(grid) > 1 and folds >= 2 and n >= 2 * folds:
        perm = list(range(n))
        random.Random(seed).shuffle(perm)
        parts = [perm[i::folds] for i in range(folds)]
        scores = []
        for l2 in grid:
            hits = 0.0
            for k in range(folds):
                test = torch.tensor(parts[k])
                train = torch.tensor([i for j, p in enumerate(parts) if j != k for i in p])
                w = _fit(x[train], l2, None if weights is None else weights[train], max_iter=100)
                hits += _accuracy(x[test], w) * len(test)
            scores.append(hits / n)
        best = max(range(len(grid)), key=lambda i: (scores[i], grid[i]))  # ties: the stronger L2
        l2, cv = grid[best], scores[best]
    else:
        l2 = grid[len(grid) // 2]
    w = _fit(x, l2, weights)
    weight = (w / sd).float()
    bias = float(-(mu.float() @ weight))
    return BradleyTerryFit(weight=weight, bias=bias, l2=l2, cv_accuracy=cv, train_accuracy=_accuracy(x, w))


def write_head(model, fit: BradleyTerryFit) -> None:
    """Put the fitted weight (and bias, when the layer has one) into the model's final score layer."""
    linear = _final_linear(head_module(model))
    if linear.out_features != 1 or linear.in_features != fit.weight.numel():
        raise ValueError(f"score layer is {linear.in_features}->{linear.out_features}; the fit has "
                         f"{fit.weight.numel()} features for one output")
    with torch.no_grad():
        linear.weight.copy_(fit.weight.view(1, -1).to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.fill_(fit.bias)


def probe_head(model, chosen_ids: list[list[int]], rejected_ids: list[list[int]], pad_id: int,
               margins: list[float] | None = None, seed: int = 0, batch_size: int = 32, progress=None) -> dict:
    """Fit the model's score head on frozen features of the pairs and write it in; return a summary."""
    feats = head_features(model, [*chosen_ids, *rejected_ids], pad_id, batch_size, progress)
    n = len(chosen_ids)
    m = None if margins is None else torch.tensor(margins, dtype=torch.float64)
    fit = fit_bradley_terry(feats[:n], feats[n:], seed=seed, margins=m)
    write_head(model, fit)
    finite = all(math.isfinite(v) for v in (fit.bias, float(fit.weight.abs().max())))
    if not finite:
        raise ValueError("the probe produced non-finite weights")
    return {"l2": fit.l2, "cv_accuracy": fit.cv_accuracy, "train_accuracy": fit.train_accuracy, "pairs": n}
