"""ddpm_lab.digits: the 17-level data, the split, the K-level decoder, the classifier, and a tiny end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ddpm_lab import NoiseSchedule
from ddpm_lab import digits as Dg
from ddpm_lab.diffusion import ddim_timesteps, sample_ancestral, sample_ddim
from ddpm_lab.gaussians import discretized_log_normal


@pytest.fixture(scope="module")
def split():
    return Dg.load_digits_split()


def test_level_mapping_round_trip_and_values() -> None:
    k = torch.arange(17, dtype=torch.uint8).repeat(4)[:64].reshape(1, 1, 8, 8)
    x = Dg.to_model_space(k)
    expected = torch.tensor([2 * j / 16 - 1 for j in range(17)])  # x = 2k/(K-1) - 1 written out
    assert torch.allclose(x.flatten()[:17], expected, rtol=0, atol=1e-7)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(Dg.to_levels(x), k)
    off = torch.full((1, 1, 8, 8), 1.5)
    assert (Dg.to_levels(off) == 16).all() and (Dg.to_levels(-off) == 0).all()
    assert (Dg.to_levels(torch.full((1, 1, 8, 8), -1 + 1.01 / 16)) == 1).all()  # nearest: 0.505 of a step -> 1
    assert (Dg.to_levels(torch.full((1, 1, 8, 8), -1 + 0.99 / 16)) == 0).all()


@pytest.mark.parametrize("bad, match", [
    (torch.full((2, 1, 8, 8), 17, dtype=torch.uint8), "0..16, got 17"),
    (torch.full((2, 1, 8, 8), -1, dtype=torch.int64), "got -1"),
    (torch.zeros((2, 8, 8), dtype=torch.uint8), r"shape \(N, 1, 8, 8\)"),
    (torch.zeros((2, 1, 8, 7), dtype=torch.uint8), r"shape \(N, 1, 8, 8\)"),
    (torch.zeros((2, 1, 8, 8)), "dtype torch.float32"),
])
def test_to_model_space_rejects(bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        Dg.to_model_space(bad)


def test_to_levels_rejects() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        Dg.to_levels(torch.zeros((1, 1, 8, 8), dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        Dg.to_levels(torch.zeros((1, 64)))
    with pytest.raises(ValueError, match="NaN"):
        Dg.to_levels(torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="K must be"):
        Dg.to_levels(torch.zeros((1, 1, 8, 8)), K=1)


def test_split_is_stratified_disjoint_and_complete(split) -> None:
    xtr, ytr, xte, yte = split
    assert xtr.dtype == np.uint8 and xtr.shape[1:] == (1, 8, 8) and xtr.max() == 16
    assert len(xtr) + len(xte) == 1797
    from sklearn.datasets import load_digits
    d = load_digits()
    counts = np.bincount(d.target, minlength=10)
    assert np.array_equal(np.bincount(yte, minlength=10), np.round(0.2 * counts).astype(int))
    # disjoint: every image of the data set is in exactly one part (compare as multisets of (image, label))
    key = lambda x, y: sorted(zip(map(bytes, x.reshape(len(x), -1)), y.tolist()))  # noqa: E731
    assert key(np.concatenate([xtr, xte]), np.concatenate([ytr, yte])) == key(d.images.astype(np.uint8), d.target)
    again = Dg.load_digits_split()
    assert all(np.array_equal(a, b) for a, b in zip(split, again))
    with pytest.raises(ValueError, match="held_out"):
        Dg.load_digits_split(held_out=1.0)


def test_k_level_decoder_sums_to_one_against_the_formula() -> None:
    K = 17
    grid = torch.tensor([2 * k / (K - 1) - 1 for k in range(K)], dtype=torch.float64)
    for mean, sd in [(0.0, 0.03), (0.37, 0.2), (-0.95, 0.01), (1.3, 0.5)]:
        logp = discretized_log_normal(grid, torch.full((K,), mean, dtype=torch.float64), 2 * math.log(sd), bins=K)
        assert abs(logp.exp().sum().item() - 1) < 1e-12
        # Eq. 13 written out: bin edges x -+ 1/(K-1), outer edges at -+ infinity
        lo = np.array([-np.inf] + [g - 1 / (K - 1) for g in grid[1:].tolist()])
        hi = np.array([g + 1 / (K - 1) for g in grid[:-1].tolist()] + [np.inf])
        upper = grid.numpy() > mean  # the upper tail through the survival function (no cancellation to 0)
        expected = np.where(upper, norm.sf(lo, mean, sd) - norm.sf(hi, mean, sd),
                            norm.cdf(hi, mean, sd) - norm.cdf(lo, mean, sd))
        assert np.allclose(logp.exp().numpy(), expected, rtol=1e-9, atol=1e-300)


def test_independent_pixel_model() -> None:
    lv = torch.zeros((3, 1, 8, 8), dtype=torch.uint8)
    lv[1] = 16
    probs = Dg.level_histograms(lv, pseudo_count=1.0)
    assert probs.shape == (64, 17) and np.allclose(probs.sum(1), 1)
    assert np.allclose(probs[:, 0], 3 / 20) and np.allclose(probs[:, 16], 2 / 20)  # (2 + 1) / (3 + 17)
    assert np.allclose(Dg.independent_pixel_bits(lv[:1], probs), -math.log2(3 / 20))
    draws = Dg.sample_independent_pixels(probs, 5, seed=0)
    assert draws.shape == (5, 1, 8, 8) and draws.dtype == torch.uint8 and draws.max() <= 16


def test_nearest_train_distance() -> None:
    train = torch.zeros((2, 1, 8, 8), dtype=torch.uint8)
    train[1, 0, 0, 0] = 3
    query = train.clone()
    query[0, 0, 7, 7] = 4
    d, i = Dg.nearest_train_distance(query, train)
    assert np.allclose(d, [4.0, 0.0]) and list(i) == [0, 1]


def test_classifier_reaches_accuracy(split) -> None:
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = split
    net = Dg.train_classifier(xtr, ytr)
    probs, feats = Dg.classify(net, xte)
    assert probs.shape == (len(xte), 10) and feats.shape == (len(xte), 32)
    assert (probs.argmax(1) == yte).mean() >= 0.93  # stated target; 0.955 measured
    with pytest.raises(ValueError, match="labels"):
        Dg.train_classifier(xtr, ytr[:-1])


def test_tiny_end_to_end(split) -> None:
    torch.set_num_threads(1)
    xtr = split[0][:32]
    sched = NoiseSchedule.linear(T=10, beta_1=0.01, beta_T=0.5)
    cfg = Dg.DigitsTrainConfig(steps=2, batch=8, warmup=1)
    net, losses = Dg.train_digits(xtr, sched, cfg)
    net2, losses2 = Dg.train_digits(xtr, sched, cfg)
    assert np.array_equal(losses, losses2) and np.isfinite(losses).all()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    x = sample_ancestral(sched, net, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float32,
                         clip_x0=True)
    assert Dg.to_levels(x).shape == (4, 1, 8, 8)
    y = sample_ddim(sched, net, torch.randn(4, 1, 8, 8), ddim_timesteps(10, 3), clip_x0=True)
    assert torch.isfinite(y).all()
    out = Dg.bound_terms(net, sched, xtr[:4])
    assert out["terms"].shape == (4, 11) and (out["terms"][:, 1:] >= 0).all() and out["mse"].shape == (11,)
    with pytest.raises(ValueError, match="steps"):
        Dg.DigitsTrainConfig(steps=0)
    with pytest.raises(ValueError, match="preset"):
        Dg.train_digits(xtr, sched, cfg, preset="nope")
