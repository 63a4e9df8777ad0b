"""The Bradley-Terry probe: fitted on features, written into a real score head."""

from __future__ import annotations

import pytest
import torch

from reward_models.probe import fit_bradley_terry, head_features, write_head


def planted(n: int, d: int = 16, noise: float = 0.5, seed: int = 0):
    """Pairs whose chosen side scores higher along a planted direction (plus a large offset)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=g)
    a = torch.randn(n, d, generator=g) * 3 + 10
    b = torch.randn(n, d, generator=g) * 3 + 10
    sa, sb = a @ direction + noise * torch.randn(n, generator=g), b @ direction
    chosen = torch.where((sa > sb).unsqueeze(1), a, b)
    rejected = torch.where((sa > sb).unsqueeze(1), b, a)
    return chosen, rejected, direction


def test_fit_recovers_the_planted_direction_and_centres_rewards():
    chosen, rejected, direction = planted(400)
    fit = fit_bradley_terry(chosen[:300], rejected[:300])
    held = (fit.score(chosen[300:]) > fit.score(rejected[300:])).float().mean().item()
    assert held >= 0.9
    assert fit.cv_accuracy is not None and fit.cv_accuracy >= 0.85
    cos = torch.nn.functional.cosine_similarity(fit.weight, direction, dim=0).item()
    assert cos > 0.8
    mean_reward = torch.cat([fit.score(chosen[:300]), fit.score(rejected[:300])]).mean().item()
    assert abs(mean_reward) < 0.05  # the bias centres the fitted replies' rewards on zero


def test_noise_features_pick_strong_regularization_and_stay_near_chance():
    g = torch.Generator().manual_seed(1)
    chosen, rejected = torch.randn(200, 64, generator=g), torch.randn(200, 64, generator=g)
    fit = fit_bradley_terry(chosen, rejected)
    assert fit.l2 >= 1e-2  # nothing to learn: CV prefers shrinking the weights
    assert fit.cv_accuracy < 0.65


def test_margins_weight_the_pairs():
    chosen, rejected, _ = planted(100, seed=2)
    # flip the labels of 20 pairs with margin 0; the 80 right ones have margin 1
    c, r = chosen.clone(), rejected.clone()
    c[:20], r[:20] = rejected[:20], chosen[:20]
    margins = torch.tensor([0.0] * 20 + [1.0] * 80)
    plain = fit_bradley_terry(c, r, l2_grid=(1e-2,))
    weighted = fit_bradley_terry(c, r, l2_grid=(1e-2,), margins=margins)
    acc = lambda f: (f.score(chosen) > f.score(rejected)).float().mean().item()
    assert acc(weighted) >= acc(plain)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        fit_bradley_terry(torch.zeros(3, 4), torch.zeros(3, 5))


def test_head_features_are_what_the_score_layer_reads(tiny_model_dir):
    """Writing a fit into the head reproduces the fit's scores through the model's own forward."""
    from rewardlab.models import load_sequence_classifier, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir), padding_side="right")
    model = load_sequence_classifier(str(tiny_model_dir), tokenizer=tok)
    seqs = [tok(t)["input_ids"] for t in ["a b c", "the quick brown fox jumps", "sea", "blue water tea cup"]]
    feats = head_features(model, seqs, tok.pad_token_id, batch_size=2)
    assert feats.shape == (4, model.config.hidden_size)
    fit = fit_bradley_terry(feats[:2], feats[2:], l2_grid=(1e-3,))
    write_head(model, fit)
    model.eval()
    with torch.no_grad():
        direct = [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]
    expected = fit.score(feats)
    if model.score.bias is None:  # a bias-free head (causal LMs) gets the weight only
        expected = expected - fit.bias
    assert direct == pytest.approx(expected.tolist(), abs=1e-3)
    with pytest.raises(ValueError):
        write_head(model, type(fit)(weight=torch.zeros(3), bias=0.0, l2=0.1, cv_accuracy=None, train_accuracy=0.5))
