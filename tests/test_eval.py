"""Sampling and evaluation of the CIFAR-10 model, on CPU with a tiny U-Net."""

import math

import numpy as np
import pytest
import torch

from ddpm_lab import metrics as M
from ddpm_lab.sample import eps_model_of, image_grid, sample_images, save_png
from ddpm_lab.schedules import NoiseSchedule
from ddpm_lab.unet import PRESETS, UNet


def tiny_model(seed=0):
    torch.manual_seed(seed)
    net = UNet(PRESETS["tiny"]).eval()
    with torch.no_grad():  # the output layer starts at zero: give it weights so the model is not trivial
        net.conv_out.weight.normal_(0, 0.02)
    return net


def fake_uint8(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 8))
    mu, s = M.feature_stats(f)
    assert abs(M.frechet_distance(mu, s, mu, s)) < 1e-8


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    # commuting (diagonal) covariances: ||mu1 - mu2||^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.5, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.3, 2.0, 4.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert M.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # a rotation of both leaves it unchanged
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    rot = M.frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert rot == pytest.approx(expected, rel=1e-8)


def test_inception_score_limits():
    assert M.inception_score(np.full((100, 10), 0.1), splits=2)[0] == pytest.approx(1.0)
    onehot = np.eye(10)[np.arange(100) % 10]
    assert M.inception_score(onehot, splits=2)[0] == pytest.approx(10.0)
    with pytest.raises(ValueError):
        M.inception_score(np.ones((3, 2)))


def test_bits_per_dim_is_stable_across_batch_sizes(monkeypatch):
    monkeypatch.setattr(M, "NOISE_BLOCK", 2)  # 7 images: blocks of 2, 2, 2, 1
    sched = NoiseSchedule.linear(T=4, beta_1=0.05, beta_T=0.5)
    eps = eps_model_of(tiny_model(), bf16=False)
    imgs = fake_uint8(7)
    a = M.bits_per_dim_vlb(eps, sched, imgs, batch=1, progress=False)
    b = M.bits_per_dim_vlb(eps, sched, imgs, batch=6, progress=False)
    assert a["n"] == 7 and len(a["terms_bits_per_dim"]) == 5  # L_0, L_1, L_2, L_3, L_T = L_4
    assert a["bits_per_dim"] == pytest.approx(b["bits_per_dim"], rel=1e-5)
    assert np.allclose(a["terms_bits_per_dim"], b["terms_bits_per_dim"], rtol=1e-5)
    assert sum(a["terms_bits_per_dim"]) == pytest.approx(a["bits_per_dim"], rel=1e-5)  # the terms add up to the bound
    # L_T from its closed form, independently of the loop: KL(N(sqrt(ab) x0, 1 - ab) || N(0, 1)) per dimension
    ab = sched.alpha_bars[4].item()
    x0 = imgs.astype(np.float64) / 127.5 - 1
    kl = 0.5 * (ab * x0**2 + (1 - ab) - 1 - np.log(1 - ab))
    assert a["terms_bits_per_dim"][4] == pytest.approx(kl.sum((1, 2, 3)).mean() / (x0[0].size * np.log(2)), rel=1e-5)
    assert a["bits_per_dim"] > 0


def test_sample_images_grid_and_png(tmp_path):
    sched = NoiseSchedule.linear(T=10, beta_1=0.01, beta_T=0.3)
    net = tiny_model()
    for method in ("ancestral", "ddim"):
        x = sample_images(net, sched, 5, batch=3, method=method, steps=4, progress=False)
        assert x.shape == (5, 32, 32, 3) and x.dtype == np.uint8
    grid = image_grid(x, nrow=3)
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2, 3)
    save_png(grid, tmp_path / "g.png", scale=2)
    assert (tmp_path / "g.png").stat().st_size > 0
    with pytest.raises(ValueError, match="method"):
        sample_images(net, sched, 1, method="euler", progress=False)


def test_nearest_neighbours_finds_copies():
    train = fake_uint8(50)
    d, i = M.nearest_neighbours(train[[7, 31]], train)
    assert np.allclose(d, 0) and i.tolist() == [7, 31]


def test_classifier_trains_and_gives_features():
    x = fake_uint8(64)
    y = (x.mean(axis=(1, 2, 3)) > 127).astype(np.int64)  # a learnable label: brightness
    net = M.train_classifier(x, y, steps=30, batch=32, c=8, progress=False)
    f, p = M.classifier_features(net, x)
    assert f.shape == (64, 32) and p.shape == (64, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    mu, s = M.feature_stats(f)
    assert M.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-6)
