"""Issue 16, item 4: inputs that used to give a silently wrong number (or a raw RuntimeError) now raise a
ValueError that names the value; empty batches give empty results. One test per bug."""

import math

import numpy as np
import pytest
import torch

from ddpm_lab import checks, diffusion as D, elbo, latent, metrics, toy
from ddpm_lab.gaussians import GaussianMixture, discretized_log_normal
from ddpm_lab.schedules import NoiseSchedule, cosine_betas, linear_betas
from ddpm_lab.unet import PRESETS, UNet

F64 = torch.float64
SCHED = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)


def zero_eps(xt, t):
    return torch.zeros_like(xt)


def gauss_model(xt, t):
    return torch.zeros_like(xt), torch.zeros_like(xt)


# --- integer data into the diffusion functions -----------------------------------------------
INT_IMAGES = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
FLOAT_IMAGES = torch.rand(2, 3, 4, 4) * 2 - 1


@pytest.mark.parametrize("call", [
    lambda x, f: D.q_sample(SCHED, x, 5, eps=torch.randn(x.shape)),
    lambda x, f: D.q_mean_variance(SCHED, x, 5),
    lambda x, f: D.q_posterior(SCHED, x, f, 5),
    lambda x, f: D.q_posterior(SCHED, f, x, 5),
    lambda x, f: D.q_step(SCHED, x, 5),
    lambda x, f: D.predict_x0_from_eps(SCHED, x, f, 5),
    lambda x, f: D.predict_eps_from_x0(SCHED, f, x, 5),
    lambda x, f: D.v_from_x0_eps(SCHED, x, f, 5),
    lambda x, f: D.score_from_eps(SCHED, x, 5),
    lambda x, f: D.p_sample_step(SCHED, zero_eps, x, 5),
    lambda x, f: D.sample_ddim(SCHED, zero_eps, x, [1, 5]),
    lambda x, f: D.ddim_invert(SCHED, zero_eps, x, [1, 5]),
], ids=["q_sample", "q_mean_variance", "q_posterior_x0", "q_posterior_xt", "q_step", "predict_x0_from_eps",
        "predict_eps_from_x0", "v_from_x0_eps", "score_from_eps", "p_sample_step", "sample_ddim", "ddim_invert"])
def test_integer_images_are_refused_not_zeroed(call):
    # Before: the float64 coefficients were cast to uint8/int64 (all 0), so q_sample returned zeros.
    with pytest.raises(ValueError, match=r"must be a floating-point tensor, got dtype torch.uint8.*to_model_space"):
        call(INT_IMAGES, FLOAT_IMAGES)
    with pytest.raises(ValueError, match=r"x0 must be a floating-point tensor, got dtype torch.int64"):
        D.q_mean_variance(SCHED, torch.ones(2, 3, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"x_T must be a floating-point tensor, got dtype torch.uint8"):
        D.sample_ancestral(SCHED, zero_eps, (2, 3, 4, 4), x_T=INT_IMAGES)
    with pytest.raises(ValueError, match="dtype must be a floating-point dtype, got torch.int64"):
        D.sample_ancestral(SCHED, zero_eps, (2, 3), dtype=torch.long)


# --- GaussianMixture ---------------------------------------------------------------------------
def test_mixture_refuses_a_non_symmetric_covariance():
    # Before: accepted; the Cholesky factor read the lower triangle, the posterior mean the whole matrix.
    with pytest.raises(ValueError, match=r"covs\[0\] is not symmetric \(max \|S - S\^T\| = 0.5\)"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]))
    # symmetric to rounding (A A^T in float32) is accepted, then symmetrized exactly
    A = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 3), (A @ A.T + torch.eye(3))[None])
    assert torch.equal(gm.covs, gm.covs.mT)


@pytest.mark.parametrize("weights, means, covs, match", [
    ([math.nan, 1.0], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]], "weights must be positive and sum to 1"),
    ([math.inf, 1.0], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]], "weights must be positive and sum to 1"),
    ([1.0], [[math.nan, 0.0]], [[1.0, 1.0]], "means must be finite"),
    ([1.0], [[math.inf, 0.0]], [[1.0, 1.0]], "means must be finite"),
    ([1.0], [[0.0, 0.0]], [[math.inf, 1.0]], "covs must be finite"),
])
def test_mixture_refuses_nan_or_inf_parameters(weights, means, covs, match):
    # Before: NaN weights (and NaN/inf means) were accepted, and every density was NaN.
    with pytest.raises(ValueError, match=match):
        GaussianMixture(torch.tensor(weights, dtype=F64), torch.tensor(means, dtype=F64), torch.tensor(covs, dtype=F64))


def test_mixture_sample_of_zero_is_empty_and_negative_is_refused():
    # Before: sample(0) was a raw RuntimeError from torch.multinomial.
    gm = toy.mixture()
    assert gm.sample(0).shape == (0, 2)
    with pytest.raises(ValueError, match="n must be an integer >= 0.*got -1"):
        gm.sample(-1)
    with pytest.raises(ValueError, match="n must be an integer >= 0.*got 2.5"):
        gm.sample(2.5)


# --- KL and Frechet distance: covariances must be covariances -----------------------------------
def test_gaussian_kl_full_refuses_covariances_that_are_not_positive_definite():
    # Before: S1 = -I gave KL = -2.0, S1 = diag(-1, 1) NaN, a non-symmetric S1 0.0, S2 = -I a raw LinAlgError.
    z, eye = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)
    with pytest.raises(ValueError, match="S1 must be positive definite, got smallest eigenvalue -1"):
        latent.gaussian_kl_full(z, -eye, z, eye)
    with pytest.raises(ValueError, match="S1 must be positive definite"):
        latent.gaussian_kl_full(z, torch.diag(torch.tensor([-1.0, 1.0], dtype=F64)), z, eye)
    with pytest.raises(ValueError, match="S2 must be positive definite"):
        latent.gaussian_kl_full(z, eye, z, -eye)
    with pytest.raises(ValueError, match=r"S1 must be symmetric, got max \|S1 - S1\^T\| = 0.5"):
        latent.gaussian_kl_full(z, torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64), z, eye)
    with pytest.raises(ValueError, match="S2 must be a finite"):
        latent.gaussian_kl_full(z, eye, z, torch.full((2, 2), math.nan, dtype=F64))
    with pytest.raises(ValueError, match="means must be finite"):
        latent.gaussian_kl_full(torch.tensor([math.nan, 0.0], dtype=F64), eye, z, eye)
    # a valid pair still gives the closed form: KL(N(0, I) || N(m, 2I)) = 1/2 (k/2 + |m|^2/2 - k + k log 2)
    m = torch.tensor([1.0, -2.0], dtype=F64)
    expected = 0.5 * (1.0 + 5.0 / 2 - 2 + 2 * math.log(2.0))
    assert latent.gaussian_kl_full(z, eye, m, 2 * eye).item() == pytest.approx(expected, rel=1e-14)


def test_frechet_distance_refuses_invalid_covariances_and_is_never_negative():
    # Before: -2I with itself gave -16.0 (I against -4I gave -6.0), NaN covariances gave NaN.
    z, eye = np.zeros(2), np.eye(2)
    with pytest.raises(ValueError, match="sigma1 must be positive semi-definite.*-2"):
        metrics.frechet_distance(z, -2 * eye, z, -2 * eye)
    with pytest.raises(ValueError, match="sigma2 must be positive semi-definite.*-4"):
        metrics.frechet_distance(z, eye, z, -4 * eye)
    with pytest.raises(ValueError, match="sigma1 must be symmetric"):
        metrics.frechet_distance(z, np.array([[1.0, 0.5], [0.0, 1.0]]), z, eye)
    with pytest.raises(ValueError, match="mu1 and sigma1 must be finite"):
        metrics.frechet_distance(z, np.full((2, 2), np.nan), z, eye)
    with pytest.raises(ValueError, match="mu2 and sigma2 must be finite"):
        metrics.frechet_distance(z, eye, np.array([np.inf, 0.0]), eye)
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.frechet_distance(z, eye, np.zeros(3), np.eye(3))
    # rank-deficient sample covariances (fewer samples than dimensions) are valid, and the distance is >= 0
    f = np.random.default_rng(0).normal(size=(5, 8))
    mu, s = metrics.feature_stats(f)
    assert metrics.frechet_distance(mu, s, mu, s) >= 0.0


# --- unknown strings and nonsense counts in the toy module ----------------------------------------
def test_toy_refuses_unknown_strings():
    # Before: any string but "eps" meant "mu" and any variance but "beta" meant "beta_tilde", silently.
    net, xt, t = toy.MLPDenoiser(), torch.zeros(2, 2), torch.tensor([3, 4])
    with pytest.raises(ValueError, match=r"unknown parameterization 'x0'; choose one of \['eps', 'mu'\]"):
        toy.model_mean_logvar(SCHED, net, xt, t, "x0", "beta")
    with pytest.raises(ValueError, match=r"unknown variance 'fixed'; choose one of \['beta', 'beta_tilde', 'learned'\]"):
        toy.model_mean_logvar(SCHED, net, xt, t, "eps", "fixed")
    with pytest.raises(ValueError, match="unknown parameterization 'x0'"):
        toy.eps_model_of(SCHED, net, "x0")
    with pytest.raises(ValueError, match="unknown variance 'fixed'"):
        toy.TrainConfig(variance="fixed")
    with pytest.raises(ValueError, match="unknown objective 'elbo'"):
        toy.TrainConfig(objective="elbo")
    cfg = toy.TrainConfig(steps=1, batch=4, progress=False)
    cfg.variance = "fixed"  # a mutable dataclass: train checks again
    with pytest.raises(ValueError, match="unknown variance 'fixed'"):
        toy.train(toy.MLPDenoiser(), toy.two_moons, SCHED, cfg)


@pytest.mark.parametrize("field, value", [("batch", 0), ("batch", -3), ("steps", 0), ("steps", -5), ("steps", 2.5),
                                          ("lr", 0.0), ("lr", -1e-3), ("lr", math.nan), ("lr", math.inf)])
def test_toy_train_refuses_nonsense_counts_and_rates(field, value):
    # Before: batch=0 trained on NaN losses, steps <= 0 returned an untrained net, lr=0 "trained" without moving.
    with pytest.raises(ValueError, match=rf"{field} must be"):
        toy.TrainConfig(**{field: value})
    cfg = toy.TrainConfig(steps=1, batch=4, progress=False)
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=rf"{field} must be"):
        toy.train(toy.MLPDenoiser(), toy.two_moons, SCHED, cfg)


# --- the U-Net ------------------------------------------------------------------------------------
def test_unet_refuses_non_square_images_and_a_t_of_the_wrong_batch_size():
    # Before: (B, 3, 16, 32) ran (attention at the wrong resolution); t of length 1 for 2 images broadcast.
    net = UNet(PRESETS["tiny"])
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 32, 32\).*got \(2, 3, 16, 32\)"):
        net(torch.randn(2, 3, 16, 32), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 32, 32\).*torch.uint8"):
        net(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([1, 2]))
    for t in (torch.tensor([1]), torch.tensor([1, 2, 3]), torch.tensor(1), torch.tensor([[1], [2]]),
              torch.tensor([1.0, 2.0])):
        with pytest.raises(ValueError, match=r"expected integer timesteps t of shape \(2,\), one per image"):
            net(x, t)
    assert net(x, torch.tensor([1, 2])).shape == x.shape


# --- nearest neighbours -----------------------------------------------------------------------------
def test_nearest_neighbours_refuses_mismatched_sizes_and_an_empty_training_set():
    # Before: (4, 4, 3) samples against (2, 8, 3) training images were reshaped and compared; an empty training
    # set gave distance inf at index 0; no samples was a confusing reshape error.
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"same size, got shapes \(2, 4, 4, 3\) and \(2, 2, 8, 3\)"):
        metrics.nearest_neighbours(a, rng.integers(0, 256, (2, 2, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="train is empty"):
        metrics.nearest_neighbours(a, a[:0])
    with pytest.raises(ValueError, match="must be uint8 images, got float64"):
        metrics.nearest_neighbours(a / 255.0, a)
    d, i = metrics.nearest_neighbours(a[:0], a)
    assert d.shape == i.shape == (0,)


# --- the noise schedule -------------------------------------------------------------------------------
def test_a_schedule_whose_alpha_bar_T_underflows_is_refused():
    # Before: T = 100,000 gave alpha_bar_T = 0 in float64, and DDIM from x_T returned NaN.
    with pytest.raises(ValueError, match=r"log alpha_bar_T = -1011.77 with T = 100000: alpha_bar_T underflows"):
        NoiseSchedule.linear(100_000)
    with pytest.raises(ValueError, match="underflows"):
        NoiseSchedule(torch.full((800,), 0.6, dtype=F64))  # log alpha_bar_T = 800 log 0.4 = -733
    ok = NoiseSchedule(torch.full((700,), 0.6, dtype=F64))  # -641: alpha_bar_T ~ 1e-279, a normal float64
    x = D.sample_ddim(ok, zero_eps, torch.randn(3, 2, dtype=F64), [1, 350, 700])
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("s", [-0.1, -0.5, math.nan, math.inf])
def test_cosine_betas_refuses_negative_or_non_finite_s(s):
    # Before: s < 0 gave negative betas, NaN or inf s NaN betas.
    with pytest.raises(ValueError, match="s must be finite and >= 0"):
        cosine_betas(10, s=s)


def test_cosine_betas_s_zero_is_valid_and_other_parameters_are_checked():
    betas = cosine_betas(1000, s=0.0)  # beta_1 = sin^2(pi / 2T): tiny but positive
    assert betas[0].item() == pytest.approx(math.sin(math.pi / 2000) ** 2, rel=1e-9)
    assert ((betas > 0) & (betas <= 0.999)).all()
    NoiseSchedule.cosine(1000, 0.0)
    with pytest.raises(ValueError, match="T must be an integer >= 1, got 10.5"):
        cosine_betas(10.5)
    with pytest.raises(ValueError, match="T must be an integer >= 1, got 10.5"):
        linear_betas(10.5)
    with pytest.raises(ValueError, match=r"cosine_betas\(T=10, s=1e\+17\) gives beta_1 = 0.0"):
        cosine_betas(10, s=1e17)  # (t/T + s) / (1 + s) rounds to 1 for every t: no step at all


# --- NaN inputs to the likelihood functions ------------------------------------------------------------
def test_nan_inputs_to_discretized_log_normal_bits_per_dim_and_vlb_importance_are_refused():
    # Before: a NaN x, a NaN bound or NaN data passed through and came out as NaN bits.
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\].*got nan"):
        discretized_log_normal(torch.tensor([0.0, math.nan, 0.0]), x, 0.0)
    with pytest.raises(ValueError, match="mean must be finite, got nan"):
        discretized_log_normal(x, torch.tensor([0.0, math.nan, 0.0]), 0.0)
    with pytest.raises(ValueError, match="nats must not be NaN"):
        elbo.bits_per_dim(torch.tensor([1.0, math.nan]), 3)
    with pytest.raises(ValueError, match="nats must not be NaN"):
        elbo.bits_per_dim(math.nan, 3)
    with pytest.raises(ValueError, match="num_dims must be an integer >= 1, got 2.5"):
        elbo.bits_per_dim(1.0, 2.5)
    probs = torch.full((SCHED.T + 1,), 1.0 / SCHED.T, dtype=F64)
    probs[0] = 0.0
    bad = torch.zeros(2, 3, dtype=F64)
    bad[1, 2] = math.nan
    with pytest.raises(ValueError, match="x0 must be finite, got nan"):
        elbo.vlb_importance(SCHED, gauss_model, bad, probs)
    with pytest.raises(ValueError, match="x0 must be finite"):
        elbo.vlb_terms(NoiseSchedule.linear(T=3), gauss_model, bad)
    probs[5] = math.nan
    with pytest.raises(ValueError, match="probs must have"):
        elbo.vlb_importance(SCHED, gauss_model, torch.zeros(2, 3, dtype=F64), probs)


# --- empty tensors: an empty result or a ValueError, never a raw RuntimeError ---------------------------
def test_empty_batches_give_empty_results():
    # Before: vlb_importance (torch.multinomial), discretized_log_normal and the discrete decoder (max of an empty
    # tensor) and GaussianMixture.sample(0) raised raw RuntimeErrors.
    probs = torch.full((SCHED.T + 1,), 1.0 / SCHED.T, dtype=F64)
    probs[0] = 0.0
    x0 = torch.zeros(0, 3, dtype=F64)
    assert elbo.vlb_importance(SCHED, gauss_model, x0, probs).shape == (0,)
    assert discretized_log_normal(torch.zeros(0), torch.zeros(0), 0.0).shape == (0,)
    assert elbo.term_at(SCHED, gauss_model, x0, 1, decoder="discrete").shape == (0,)
    assert D.q_sample(SCHED, x0, torch.zeros(0, dtype=torch.long)).shape == (0, 3)
    assert D.sample_ddim(SCHED, zero_eps, x0, [1, 5]).shape == (0, 3)
    assert toy.mixture().sample(0).shape == (0, 2)
    assert toy.two_moons(0).shape == toy.spiral(0).shape == (0, 2)
    model = latent.LinearGaussian.random(3, 2)
    assert model.sample(0)[0].shape == (0, 3)


def test_negative_counts_and_empty_comparisons_raise_value_errors():
    # Before: raw RuntimeErrors (negative dimension) or numpy's "argmax of an empty sequence".
    model = latent.LinearGaussian.random(3, 2)
    z = torch.zeros(2, dtype=F64)
    for call in (lambda: toy.two_moons(-1), lambda: toy.spiral(-1), lambda: model.sample(-1),
                 lambda: latent.elbo_samples(model, torch.zeros(3, dtype=F64), z, z, -1),
                 lambda: latent.elbo_grad_reparam(model, torch.zeros(3, dtype=F64), z, z, -1),
                 lambda: latent.elbo_grad_score(model, torch.zeros(3, dtype=F64), z, z, -1)):
        with pytest.raises(ValueError, match="n must be an integer >= 0"):
            call()
    with pytest.raises(ValueError, match="data\\(4, generator\\) returned shape \\(0, 2\\), not 4 points"):
        toy.train(toy.MLPDenoiser(), lambda n, g: torch.zeros(0, 2), SCHED, toy.TrainConfig(steps=1, batch=4,
                                                                                           progress=False))
    empty = np.zeros(0)
    with pytest.raises(ValueError, match="nothing to compare"):
        checks.exact_check(empty, empty)
    with pytest.raises(ValueError, match="nothing to compare"):
        checks.bound_check(empty, empty, 1.0, "x")
    with pytest.raises(ValueError, match="nothing to compare"):
        checks.at_least_check(empty, empty, 1.0, "x")
    with pytest.raises(ValueError, match="at least 1 sample"):
        checks.ks_check(empty, "norm")
    with pytest.raises(ValueError, match="more rows than columns"):
        checks.ols(np.eye(2), np.ones(2))


# --- items already fixed in an earlier commit: kept under test here ----------------------------------------
def test_ddim_refuses_bad_timesteps_and_eta():
    x = torch.zeros(2, 2)
    for steps in ([], [5, 3], [-3, 5], [0, 5], [5, 5], [1, 101], [1, 2.5], [True, 5]):
        with pytest.raises(ValueError, match="timesteps must be"):
            D.sample_ddim(SCHED, zero_eps, x, steps)
        with pytest.raises(ValueError, match="timesteps must be"):
            D.ddim_invert(SCHED, zero_eps, x, steps)
    with pytest.raises(ValueError, match=r"need integers 0 <= t_prev < t <= 100, got t=5, t_prev=-1"):
        D.ddim_sigma(SCHED, 5, -1, 1.0)
    with pytest.raises(ValueError, match=r"got t=-5"):
        D.ddim_sigma(SCHED, -5, -6, 1.0)
    for eta in (-1.0, math.nan, math.inf, True, "1"):
        with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
            D.ddim_sigma(SCHED, 5, 3, eta)  # NaN eta was NaN before this commit
    with pytest.raises(ValueError, match="eta must be a finite number >= 0, got nan"):
        D.sample_ddim(SCHED, zero_eps, x, [1, 5], eta=math.nan)  # returned NaN samples before
    with pytest.raises(ValueError, match=r"num_steps must be an integer in \[1, 100\], got 2.5"):
        D.ddim_timesteps(100, 2.5)


def test_unknown_variance_is_refused_also_with_clip_x0():
    for clip in (False, True):
        with pytest.raises(ValueError, match="variance must be 'beta' or 'beta_tilde', got 'bogus'"):
            D.p_sample_step(SCHED, zero_eps, torch.zeros(2, 2), 5, variance="bogus", clip_x0=clip)
        with pytest.raises(ValueError, match="variance must be"):
            D.sample_ancestral(SCHED, zero_eps, (2, 2), variance="bogus", clip_x0=clip)
