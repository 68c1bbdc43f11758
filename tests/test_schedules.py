"""NoiseSchedule and extract: closed forms against independent computations, the paper's t (arrays of
length T + 1, index 0 = t = 0), and bad input."""

import math

import pytest
import torch

from ddpm_lab.schedules import NoiseSchedule, check_t, cosine_betas, extract, linear_betas


def test_linear_schedule_matches_paper_section_4_at_the_papers_t():
    s = NoiseSchedule.linear()
    assert s.T == 1000 and s.betas.shape == (1001,)
    assert s.betas[1].item() == pytest.approx(1e-4, rel=1e-12)  # beta_1
    assert s.betas[1000].item() == pytest.approx(0.02, rel=1e-12)  # beta_T
    assert s.alpha_bars[0].item() == 1.0  # alpha_bar_0: the empty product
    steps = torch.diff(s.betas[1:])
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-9, atol=0)
    assert repr(s) == "NoiseSchedule(T=1000, beta_1=0.0001, beta_T=0.02)"


def test_alpha_bars_are_products_eq4():
    s = NoiseSchedule.linear(T=50)
    prod = 1.0
    assert s.alpha_bars[0].item() == prod
    for t in range(1, s.T + 1):  # plain-Python product over s = 1..t, an independent route to alpha_bar_t
        prod *= 1.0 - float(s.betas[t])
        assert s.alpha_bars[t].item() == pytest.approx(prod, rel=1e-13)


def test_cosine_alpha_bar_follows_nichol_dhariwal_eq17():
    T, s_ = 1000, 0.008
    sched = NoiseSchedule.cosine(T, s_)
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    for t in [0, 1, 2, 11, 501, 901]:  # before the 0.999 clipping matters; alpha_bar(t) = f(t) / f(0)
        assert sched.alpha_bars[t].item() == pytest.approx(f(t) / f(0), rel=1e-10)
    assert sched.betas[1:].max().item() <= 0.999


def test_posterior_coefficients_eq7_and_snr():
    s = NoiseSchedule.linear(T=200)
    t = 37
    ab, abp, b = float(s.alpha_bars[t]), float(s.alpha_bars[t - 1]), float(s.betas[t])
    # an independent product for alpha_bar_{t-1}: prod_{s=1}^{t-1} (1 - beta_s), from the linear formula itself
    beta = lambda k: 1e-4 + (0.02 - 1e-4) * (k - 1) / (200 - 1)  # noqa: E731
    assert b == pytest.approx(beta(t), rel=1e-12)
    assert abp == pytest.approx(math.prod(1 - beta(k) for k in range(1, t)), rel=1e-12)
    assert s.beta_tildes[t].item() == pytest.approx((1 - abp) / (1 - ab) * b, rel=1e-12)
    assert s.posterior_mean_coef1[t].item() == pytest.approx(math.sqrt(abp) * b / (1 - ab), rel=1e-12)
    assert s.posterior_mean_coef2[t].item() == pytest.approx(math.sqrt(1 - b) * (1 - abp) / (1 - ab), rel=1e-12)
    assert s.snr[t].item() == pytest.approx(ab / (1 - ab), rel=1e-12)
    assert (torch.diff(s.snr) < 0).all(), "SNR must fall monotonically from SNR_0 = inf"


def test_one_minus_alpha_bar_keeps_full_relative_precision():
    """1 - alpha_bar_1 = beta_1 exactly; computed as 1 - cumprod it would be off in the 13th digit."""
    s = NoiseSchedule.linear()
    assert s.one_minus_alpha_bars[1].item() == pytest.approx(s.betas[1].item(), rel=1e-15)
    assert s.posterior_mean_coef1[1].item() == pytest.approx(1.0, rel=1e-15)
    assert s.posterior_mean_coef2[1].item() == 0.0
    assert torch.allclose(s.one_minus_alpha_bars, 1 - s.alpha_bars, rtol=1e-11, atol=0)
    # the teeth: 1 - cumprod really is worse at t = 1 (otherwise the -expm1 route would be pointless)
    naive = 1 - torch.cumprod(1 - s.betas[1:], 0)[0].item()
    assert abs(naive / s.betas[1].item() - 1) > 1e-14


def test_posterior_variance_at_t1_is_zero_and_log_is_clipped():
    s = NoiseSchedule.linear()
    assert s.beta_tildes[1].item() == 0.0 and math.copysign(1, s.beta_tildes[1].item()) == 1.0
    assert torch.isfinite(s.posterior_log_variance_clipped[1:]).all()
    assert s.posterior_log_variance_clipped[1] == s.posterior_log_variance_clipped[2]
    assert s.posterior_log_variance_clipped[2].item() == math.log(s.beta_tildes[2].item())
    assert s.posterior_log_variance_clipped[5].item() == pytest.approx(math.log(s.beta_tildes[5].item()))


def test_index_zero_holds_the_t0_value_or_nan():
    """alpha_bar_0 = 1, 1 - alpha_bar_0 = 0, log alpha_bar_0 = 0, SNR_0 = +inf are defined; beta_0, alpha_0,
    beta_tilde_0 and the posterior coefficients at 0 are not: NaN, so an accidental read poisons the result."""
    s = NoiseSchedule.linear(T=10)
    assert s.alpha_bars[0].item() == 1.0 and s.log_alpha_bars[0].item() == 0.0
    assert s.one_minus_alpha_bars[0].item() == 0.0 and math.copysign(1, s.one_minus_alpha_bars[0].item()) == 1.0
    assert s.snr[0].item() == math.inf
    for name in ["betas", "alphas", "beta_tildes", "posterior_log_variance_clipped", "posterior_mean_coef1",
                 "posterior_mean_coef2"]:
        v = getattr(s, name)
        assert math.isnan(v[0].item()), name
        assert torch.isfinite(v[1:]).all(), name
    assert not hasattr(s, "alpha_bars_prev") and not hasattr(s, "one_minus_alpha_bars_prev")


def test_single_step_schedule():
    s = NoiseSchedule(torch.tensor([0.3], dtype=torch.float64))
    assert s.T == 1 and s.alpha_bars[0].item() == 1.0 and s.alpha_bars[1].item() == pytest.approx(0.7, rel=1e-15)
    assert s.beta_tildes[1].item() == 0.0
    assert s.posterior_log_variance_clipped[1].item() == pytest.approx(math.log(0.3))


def test_schedule_is_float64_of_length_T_plus_1():
    s = NoiseSchedule.cosine(T=10)
    for name in ["betas", "alphas", "alpha_bars", "log_alpha_bars", "one_minus_alpha_bars", "beta_tildes", "snr",
                 "posterior_mean_coef1", "posterior_mean_coef2", "posterior_log_variance_clipped"]:
        v = getattr(s, name)
        assert v.dtype == torch.float64 and v.shape == (11,), name


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_betas_outside_unit_interval_raise_naming_the_value(bad):
    betas = torch.full((5,), 0.01, dtype=torch.float64)
    betas[3] = bad
    with pytest.raises(ValueError, match=r"beta_4 = "):
        NoiseSchedule(betas)


def test_passing_an_array_indexed_by_t_back_is_refused():
    s = NoiseSchedule.linear(T=10)
    with pytest.raises(ValueError, match=r"betas\[0\] is NaN: pass the T values beta_1..beta_T"):
        NoiseSchedule(s.betas)
    assert torch.equal(NoiseSchedule(s.betas[1:]).alpha_bars, s.alpha_bars)


def test_bad_schedule_arguments_raise():
    with pytest.raises(ValueError, match="T must be >= 1, got 0"):
        linear_betas(T=0)
    with pytest.raises(ValueError, match="beta_1=0.5, beta_T=0.1"):
        linear_betas(10, 0.5, 0.1)
    with pytest.raises(ValueError, match="max_beta"):
        cosine_betas(10, max_beta=1.0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        NoiseSchedule(torch.full((2, 2), 0.1))
    with pytest.raises(ValueError, match="unknown schedule 'sigmoid'"):
        NoiseSchedule.from_name("sigmoid")


def test_extract_broadcasts_per_example_timesteps():
    s = NoiseSchedule.linear(T=10)
    t = torch.tensor([1, 4, 10])
    c = extract(s.alpha_bars, t, (3, 2, 4, 4))
    assert c.shape == (3, 1, 1, 1)
    assert torch.equal(c.flatten(), s.alpha_bars[t])
    x = torch.ones(3, 2, 4, 4, dtype=torch.float64)
    assert (c * x).shape == x.shape


def test_extract_scalar_timestep_broadcasts_over_the_batch():
    s = NoiseSchedule.linear(T=10)
    c = extract(s.betas, 4, (7, 5))
    assert c.shape == (1, 1) and c.item() == s.betas[4].item()
    c2 = extract(s.betas, torch.tensor(4), (7,))
    assert c2.shape == (1,)
    assert extract(s.alpha_bars, 0, (3,)).item() == 1.0  # t = 0 is a valid index of an array of length T + 1


@pytest.mark.parametrize("t", [-1, 11, torch.tensor([0, 11]), torch.tensor([-3, 2])])
def test_extract_rejects_t_outside_range(t):
    s = NoiseSchedule.linear(T=10)
    shape = (2,) if isinstance(t, torch.Tensor) else (4,)
    with pytest.raises(ValueError, match=r"t must be in \[0, 10\], got -?\d+"):
        extract(s.betas, t, shape)


@pytest.mark.parametrize("t,first,ok", [(0, 1, False), (1, 1, True), (10, 1, True), (11, 1, False),
                                        (0, 0, True), (-1, 0, False), (1, 2, False), (2, 2, True)])
def test_check_t_boundaries(t, first, ok):
    if ok:
        assert check_t(t, 10, first).item() == t
    else:
        with pytest.raises(ValueError, match=rf"t must be in \[{first}, 10\], got {t}"):
            check_t(t, 10, first)


def test_extract_rejects_mismatched_batch_and_bad_types():
    s = NoiseSchedule.linear(T=10)
    with pytest.raises(ValueError, match="t has 3 timesteps but the batch has 4"):
        extract(s.betas, torch.tensor([1, 2, 3]), (4, 2))
    with pytest.raises(ValueError, match="integer timestep"):
        extract(s.betas, 2.5, (4,))
    with pytest.raises(ValueError, match="integer timestep"):
        extract(s.betas, torch.tensor([1.0, 2.0]), (2,))
    with pytest.raises(ValueError, match="scalar or a 1-D"):
        extract(s.betas, torch.zeros(2, 2, dtype=torch.long), (2,))
    with pytest.raises(ValueError, match="at least one dimension"):
        extract(s.betas, 1, ())


def test_vp_sde_schedule_is_the_limit_of_the_linear_chain() -> None:
    from ddpm_lab.schedules import vp_alpha_bar, vp_beta, vp_log_alpha_bar
    # closed forms written out: beta(t) = 0.1 + 19.9 t, log alpha_bar(t) = -(0.1 t + 9.95 t^2)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(vp_beta(t), torch.tensor([0.1, 5.075, 10.05, 20.0], dtype=torch.float64), rtol=1e-15)
    assert torch.allclose(vp_log_alpha_bar(t), -(0.1 * t + 9.95 * t**2), rtol=1e-15)
    # Ho et al.'s chain of T = 1000 steps: log alpha_bar_t = sum log(1 - beta_s) -> log alpha_bar(t / T), error O(1/T)
    s = NoiseSchedule.linear()
    gap = (s.log_alpha_bars[1:] - vp_log_alpha_bar(torch.arange(1, 1001) / 1000)).abs().max().item()
    assert 1e-3 < gap < 0.1  # the chain is sum log(1 - beta) = -sum beta - sum beta^2 / 2 ...: close, not equal
    assert vp_alpha_bar(1.0).item() == pytest.approx(math.exp(-10.05), rel=1e-14)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_vp_sde_schedule_refuses_time_outside_unit_interval(bad: float) -> None:
    from ddpm_lab.schedules import vp_beta
    with pytest.raises(ValueError, match="t must lie in"):
        vp_beta(bad)


def test_vp_sde_schedule_refuses_bad_rates() -> None:
    from ddpm_lab.schedules import vp_alpha_bar
    with pytest.raises(ValueError, match="beta_min"):
        vp_alpha_bar(0.5, beta_min=0.0)
    with pytest.raises(ValueError, match="beta_min"):
        vp_alpha_bar(0.5, beta_min=2.0, beta_max=1.0)
