"""Graders for the book's exercises: the reader writes a function, a grader runs the book's own checks on it.

Every grader takes the reader's function (and nothing the reader could get wrong), calls it on inputs it draws
itself, compares the answer with an independent route (a closed form, Monte Carlo, Bayes on a grid, an exact
mixture) at the tolerance the chapter derived, and returns a :class:`Grade` that prints as one line:

    <exercise>: not attempted yet
    <exercise>: correct (<n> checks passed)
    <exercise>: not yet: <the first check that failed, with its numbers>

A stub whose body is ``...`` (it returns None) or that raises ``NotImplementedError`` is "not attempted yet".
A function that raises, or returns the wrong shape or a non-finite value, gets "not yet" with the reason, never a
traceback. Each grader's docstring names the equation it checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import numpy as np
from scipy import stats as _stats
import torch

from . import checks, flows, sde
from .checks import CheckResult
from .diffusion import ddim_step, predict_x0_from_eps, q_posterior, q_sample, v_from_x0_eps, x0_from_v
from .digits import independent_pixel_bits as _independent_pixel_bits_ref, level_histograms as _level_histograms
from .gaussians import discretized_log_normal, GaussianMixture, log_normal, normal_kl
from .latent import elbo, elbo_samples, gaussian_kl_full, LinearGaussian
from .metrics import frechet_distance as _frechet_distance_ref
from .schedules import NoiseSchedule
from .toy import mixture, sinusoidal_embedding as _sinusoidal_embedding_ref

__all__ = ["Grade", "NotAttempted", "GraderInputError", "call", "as_tensor", "verdict"]

Status = Literal["not attempted", "correct", "not yet"]


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one exercise; ``str(grade)`` is the one line a grading cell prints."""

    exercise: str
    status: Status
    detail: str = ""

    @property
    def correct(self) -> bool:
        return self.status == "correct"

    def __str__(self) -> str:
        if self.status == "not attempted":
            return f"{self.exercise}: not attempted yet"
        if self.status == "correct":
            return f"{self.exercise}: correct ({self.detail})" if self.detail else f"{self.exercise}: correct"
        return f"{self.exercise}: not yet: {self.detail}"


class NotAttempted(Exception):
    """The reader's function is still the stub."""


class GraderInputError(Exception):
    """The reader's function returned something the grader cannot compare (shape, type, NaN): a 'not yet'."""


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the reader's function. A stub (returns None or Ellipsis, or raises NotImplementedError) raises
    :class:`NotAttempted`; any other exception propagates to :func:`verdict`, which reports it in one line."""
    if not callable(fn):
        raise GraderInputError(f"expected a function, got {type(fn).__name__} {fn!r:.60}")
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAttempted from None
    if out is None or out is Ellipsis:
        raise NotAttempted
    return out


def as_tensor(value: Any, shape: tuple[int, ...], name: str = "your function's result") -> torch.Tensor:
    """``value`` as a float64 tensor of ``shape`` (a number for shape ()), or a :class:`GraderInputError` saying
    what was wrong with it."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64) if not isinstance(value, torch.Tensor) else value.double()
    except (TypeError, ValueError, RuntimeError):
        raise GraderInputError(f"{name} should be a tensor of shape {shape}, got {type(value).__name__}") from None
    if tuple(t.shape) != tuple(shape):
        raise GraderInputError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if not bool(torch.isfinite(t).all()):
        raise GraderInputError(f"{name} has non-finite entries (NaN or inf)")
    return t


def verdict(exercise: str, body: Callable[[], Iterable[CheckResult]]) -> Grade:
    """Run ``body`` (which calls the reader's function through :func:`call` and returns the checks it made) and
    turn the outcome into a :class:`Grade`: the first failed check, with its numbers, is the 'not yet' reason."""
    try:
        results = list(body())
    except NotAttempted:
        return Grade(exercise, "not attempted")
    except GraderInputError as e:
        return Grade(exercise, "not yet", str(e))
    except Exception as e:  # the reader's code raised: report it in one line, not a traceback
        return Grade(exercise, "not yet", f"your function raised {type(e).__name__}: {e}")
    if not results:
        raise RuntimeError(f"the grader of {exercise!r} made no check")  # a grader that cannot fail is a bug
    for r in results:
        if not r.passed:
            return Grade(exercise, "not yet", str(r))
    return Grade(exercise, "correct", f"{len(results)} check{'s' if len(results) != 1 else ''} passed")


# ---------------------------------------------------------------------------------------------
# The graders, by chapter (each: grade_<what it grades>(fn) -> Grade; docstring names the equation)
# ---------------------------------------------------------------------------------------------


# --- 01_ink_in_water ---------------------------------------------------------------------------------
__all__ += ["grade_vp_variance"]

# (Var_0, beta, k): the point start at k = 20 (where k beta and 1 - beta^k give ~1), a wide start, a slow walk
_VP_MC_CASES = ((0.0, 0.05, 20), (4.09, 0.05, 5), (0.25, 0.01, 100))
_VP_EXACT_CASES = ((0.0, 0.05, 0), (2.08, 0.05, 1), (0.0, 0.05, 200), (4.09, 0.05, 37), (9.0, 0.5, 3),
                   (0.3, 0.001, 500), (1.0, 0.2, 10))


def grade_vp_variance(vp_variance: Callable[..., Any]) -> Grade:
    """Exercise: the variance of the VP walk after k steps, Var(x_k) = alpha_bar_k Var_0 + 1 - alpha_bar_k with
    alpha_bar_k = (1 - beta)^k (Chapter 1, Eq. eq-vp-walk-var; Ho et al. 2020, Eq. 4 with a constant beta).

    The reader's ``vp_variance(var0, beta, k)`` (floats var0 >= 0, 0 < beta < 1, int k >= 0; returns a number) is
    compared with two routes. (1) Monte Carlo, as in the chapter: 20,000 particles with variance var0 walked k steps
    of x <- sqrt(1 - beta) x + sqrt(beta) eps, at three (var0, beta, k); the sample variance must lie within 5
    standard errors of the reader's value (mc_variance_check). (2) The closed form from ``NoiseSchedule`` at seven
    (var0, beta, k), k = 0 to 500, to (64 + 4k) ulps of float64 times max(1, Var): a reader who runs the recursion
    v <- (1 - beta) v + beta k times rounds a few times per step."""
    def body() -> list[CheckResult]:
        out = []
        for i, (var0, beta, k) in enumerate(_VP_MC_CASES):
            g = torch.Generator().manual_seed(100 + i)
            x = math.sqrt(var0) * torch.randn(20_000, generator=g, dtype=torch.float64)
            for _ in range(k):
                x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(x.shape, generator=g, dtype=torch.float64)
            mine = as_tensor(call(vp_variance, var0, beta, k), (), f"vp_variance({var0}, {beta}, {k})")
            out.append(checks.mc_variance_check(x, mine, name=f"simulated variance, var0={var0:g}, beta={beta:g}, k={k}"))
        eps = torch.finfo(torch.float64).eps
        for var0, beta, k in _VP_EXACT_CASES:
            mine = as_tensor(call(vp_variance, var0, beta, k), (), f"vp_variance({var0}, {beta}, {k})")
            if k == 0:
                ref = torch.tensor(var0, dtype=torch.float64)
            else:
                s = NoiseSchedule(torch.full((k,), beta, dtype=torch.float64))
                ref = s.alpha_bars[k] * var0 + s.one_minus_alpha_bars[k]
            tol = (64 + 4 * k) * eps * max(1.0, abs(ref.item()))
            out.append(checks.bound_check(mine, ref, 0.0, f"{64 + 4 * k} ulps of float64", rounding_floor=tol,
                                          name=f"alpha_bar_k var0 + 1 - alpha_bar_k, var0={var0:g}, beta={beta:g}, k={k}"))
        return out
    return verdict("Exercise (variance of the VP walk)", body)


# --- 02_latent_variables_elbo ------------------------------------------------------------------------
__all__ += ["grade_kl_gaussians_full", "grade_elbo_closed"]


def _kl_exercise_spd(k: int, g: torch.Generator) -> torch.Tensor:
    """A random symmetric positive definite k x k matrix, condition number at most ~50."""
    A = torch.randn(k, k, generator=g, dtype=torch.float64)
    return A @ A.T / k + 0.3 * torch.eye(k, dtype=torch.float64)


def grade_kl_gaussians_full(kl_gaussians_full: Callable[..., Any]) -> Grade:
    """Exercise: the KL divergence of two Gaussians with full covariances (Chapter 2, Eq. eq-kl-full),
    KL(N(m1, S1) || N(m2, S2)) = 1/2 [tr(S2^-1 S1) + (m2 - m1)^T S2^-1 (m2 - m1) - k + log det S2 - log det S1].

    The reader's ``kl_gaussians_full(m1, S1, m2, S2)`` (float64 tensors, means (k,), covariances (k, k); returns a number)
    is compared (1) with ``latent.gaussian_kl_full`` on six pairs, k = 1 to 4, one of them a Gaussian with itself
    (KL = 0), to 64 ulps of float64 times cond(S2) times the sum of the terms' magnitudes (solving with S2 amplifies
    rounding by at most its condition number); and (2) with Monte Carlo, the mean of log N(z; m1, S1) - log N(z; m2, S2)
    over 20,000 draws z ~ N(m1, S1), within 5 standard errors (mc_mean_check), for one pair in k = 3."""
    g = torch.Generator().manual_seed(21)
    pairs = []
    for k in (1, 2, 3, 3, 4):
        pairs.append((torch.randn(k, generator=g, dtype=torch.float64), _kl_exercise_spd(k, g),
                      torch.randn(k, generator=g, dtype=torch.float64), _kl_exercise_spd(k, g)))
    m, S = pairs[2][0], pairs[2][1]
    pairs.append((m, S, m.clone(), S.clone()))  # KL of a Gaussian with itself: 0
    eps = torch.finfo(torch.float64).eps

    def body() -> list[CheckResult]:
        out = []
        for i, (m1, S1, m2, S2) in enumerate(pairs):
            k = m1.shape[0]
            mine = as_tensor(call(kl_gaussians_full, m1.clone(), S1.clone(), m2.clone(), S2.clone()), (),
                             f"kl_gaussians_full(pair {i + 1})")
            ref = gaussian_kl_full(m1, S1, m2, S2)
            S2inv = torch.linalg.inv(S2)
            terms = (torch.trace(S2inv @ S1).abs() + (m2 - m1) @ S2inv @ (m2 - m1) + k
                     + torch.logdet(S2).abs() + torch.logdet(S1).abs())
            tol = 64 * eps * torch.linalg.cond(S2) * terms
            out.append(checks.bound_check(mine, ref, 0.0, "64 ulps x cond(S2) x the terms", rounding_floor=tol,
                                          name=f"KL, pair {i + 1} (k = {k})"))
        m1, S1, m2, S2 = pairs[3]
        z = m1 + torch.randn(20_000, m1.shape[0], generator=torch.Generator().manual_seed(22),
                             dtype=torch.float64) @ torch.linalg.cholesky(S1).T
        log_ratio = (torch.distributions.MultivariateNormal(m1, S1).log_prob(z)
                     - torch.distributions.MultivariateNormal(m2, S2).log_prob(z))
        mine = as_tensor(call(kl_gaussians_full, m1.clone(), S1.clone(), m2.clone(), S2.clone()), (), "kl_gaussians_full(pair 4)")
        out.append(checks.mc_mean_check(log_ratio, mine, name="Monte Carlo E_q[log q - log p] (k = 3)"))
        return out
    return verdict("Exercise (KL of two full-covariance Gaussians)", body)


def grade_elbo_closed(elbo_closed: Callable[..., Any]) -> Grade:
    """Exercise: the ELBO of the linear-Gaussian model for q(z) = N(m, diag(v)) in closed form (Chapter 2,
    Eq. eq-elbo-closed; Kingma & Welling 2014, Eq. 3):
    -d/2 log(2 pi sigma^2) - (||x - b - W m||^2 + sum_i v_i ||W_:,i||^2) / (2 sigma^2) - 1/2 sum_i (v_i + m_i^2 - 1 - log v_i).

    The reader's ``elbo_closed(W, b, sigma, x, m, v)`` (float64 tensors W (d, k), b (d,), x (d,), m (k,), v (k,) the
    variances, float sigma; returns a number) is checked, on three models (the chapter's, d = 4, k = 2, and two others)
    and four q each, (1) through the identity log p(x) - ELBO(q) = KL(q || p(z | x)) (Eq. eq-elbo-identity) against
    the exact evidence and posterior, to 64 ulps of float64 times the sum of the magnitudes of log p(x), the KL and
    the ELBO's terms (the chapter's check, allowing for the cancellation between the terms); and (2) against the mean
    of 20,000 reparameterized samples log p(x, z) - log q(z) (``latent.elbo_samples``), within 5 standard errors."""
    models = [LinearGaussian.random(d=4, k=2, sigma=0.5, seed=7), LinearGaussian.random(d=3, k=3, sigma=0.8, seed=11),
              LinearGaussian.random(d=5, k=1, sigma=0.3, seed=12)]
    eps = torch.finfo(torch.float64).eps

    def body() -> list[CheckResult]:
        out = []
        g = torch.Generator().manual_seed(23)
        for j, model in enumerate(models):
            x = model.sample(1, g)[0][0]
            log_px = model.log_prob(x)
            post_mean, post_cov = model.posterior(x)
            for i in range(4):
                m = 1.5 * torch.randn(model.k, generator=g, dtype=torch.float64)
                logvar = -1.0 + 1.5 * torch.randn(model.k, generator=g, dtype=torch.float64)
                v = logvar.exp()
                mine = as_tensor(call(elbo_closed, model.W.clone(), model.b.clone(), model.sigma, x.clone(), m.clone(),
                                      v.clone()), (), "elbo_closed(...)")
                kl = gaussian_kl_full(m, torch.diag(v), post_mean, post_cov)
                resid = x - model.W @ m - model.b
                terms = (0.5 * model.d * abs(math.log(2 * math.pi * model.sigma**2))
                         + (resid @ resid + (model.W**2 @ v).sum()) / (2 * model.sigma**2)
                         + 0.5 * (v + m**2 + 1 + logvar.abs()).sum())
                tol = 64 * eps * (1 + log_px.abs() + kl.abs() + terms)
                out.append(checks.bound_check(log_px - mine, kl, 0.0, "64 ulps x the terms", rounding_floor=tol,
                                              name=f"log p(x) - ELBO = KL(q || posterior), model {j + 1}, q {i + 1}"))
            samples = elbo_samples(model, x, m, logvar, 20_000, torch.Generator().manual_seed(24 + j))
            out.append(checks.mc_mean_check(samples, mine, name=f"Monte Carlo ELBO, model {j + 1}"))
        return out
    return verdict("Exercise (closed-form ELBO)", body)


# --- 03_forward_process ------------------------------------------------------------------------------
__all__ += ["grade_q_sample_from_betas"]


def grade_q_sample_from_betas(q_sample_from_betas: Callable[..., Any]) -> Grade:
    """Exercise: q(x_t | x_0) in one draw from the betas, x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps with
    alpha_bar_t = prod_{s <= t} (1 - beta_s) (Chapter 3, Eq. eq-forward-marginal; Ho et al. 2020, Eq. 4).

    The reader's ``q_sample_from_betas(betas, x0, t, eps)`` (betas: the T values beta_1..beta_T, a float64 tensor;
    x0 and eps: float64 tensors of one shape; t: int in 0..T; returns a tensor of x0's shape) is checked as the chapter
    checks Eq. 4: (1) Monte Carlo: 50,000 draws from x_0 = 0.8 on the linear schedule at t = 100, 1000, 10, whose mean
    and variance must lie within 5 standard errors of sqrt(alpha_bar_t) x_0 and 1 - alpha_bar_t and which must pass a
    KS test against N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t) at alpha = 1e-3; (2) the closed form: ``q_sample`` with
    the same eps, on the linear and cosine schedules at t from 0 to T, to (64 + 4t) ulps of float64 times
    |x_0| + |eps| / sqrt(1 - alpha_bar_t): a product of t factors 1 - beta_s rounds about 2t times, and 1 - alpha_bar_t
    written as a subtraction turns that absolute error into a relative one, halved by the square root."""
    linear, cosine = NoiseSchedule.linear(), NoiseSchedule.cosine()
    g = torch.Generator().manual_seed(31)
    n, x0 = 50_000, 0.8
    eps_mc = torch.randn(n, generator=g, dtype=torch.float64)
    fp = torch.finfo(torch.float64).eps

    def body() -> list[CheckResult]:
        out = []
        betas = linear.betas[1:].clone()
        for t in (100, 1000, 10):
            x = as_tensor(call(q_sample_from_betas, betas.clone(), torch.full((n,), x0, dtype=torch.float64), t,
                               eps_mc.clone()), (n,), f"q_sample_from_betas(betas, x0, {t}, eps)")
            m, sd = math.sqrt(linear.alpha_bars[t].item()) * x0, linear.one_minus_alpha_bars[t].sqrt().item()
            out.append(checks.mc_mean_check(x, m, std=sd, name=f"linear, x0 = 0.8, t = {t}: mean of your x_t vs Eq. 4"))
            out.append(checks.mc_variance_check(x, sd**2, name=f"linear, x0 = 0.8, t = {t}: variance of your x_t vs Eq. 4"))
            out.append(checks.ks_check(x, _stats.norm(m, sd).cdf, name=f"linear, x0 = 0.8, t = {t}: KS vs Eq. 4"))
        for name, s in (("linear", linear), ("cosine", cosine)):
            for t in (0, 1, 2, 10, 100, 500, 999, 1000):
                x0_ = torch.randn(4, 3, generator=g, dtype=torch.float64)
                eps = torch.randn(4, 3, generator=g, dtype=torch.float64)
                mine = as_tensor(call(q_sample_from_betas, s.betas[1:].clone(), x0_.clone(), t, eps.clone()), (4, 3),
                                 f"q_sample_from_betas(betas, x0, {t}, eps)")
                ref = q_sample(s, x0_, t, eps=eps)
                noise_scale = eps.abs() / s.one_minus_alpha_bars[t].sqrt() if t > 0 else 0.0
                tol = (64 + 4 * t) * fp * (x0_.abs() + noise_scale)
                out.append(checks.bound_check(mine, ref, 0.0, f"{64 + 4 * t} ulps of the terms", rounding_floor=tol,
                                              name=f"{name}, t = {t}: x_t vs q_sample"))
        return out
    return verdict("Exercise (q(x_t | x_0) from the betas)", body)


# --- 04_posterior ------------------------------------------------------------------------------------
__all__ += ["grade_mu_tilde"]


def grade_mu_tilde(mu_tilde: Callable[..., Any]) -> Grade:
    """Exercise: the posterior mean mu_tilde_t(x_t, x_0) = c_1 x_0 + c_2 x_t (Ho et al., Eq. 7).

    The reader's ``mu_tilde(alpha_bar_prev, alpha_bar_t, beta_t, x0, xt)`` is compared with
    ``diffusion.q_posterior`` on the paper's schedule at t = 1, 2, 500 and 1000 and random x_0, x_t. Tolerance:
    64 ulps of float64 of the terms |c_1 x_0| + |c_2 x_t|, divided by 1 - alpha_bar_t, because a reader who writes
    1 - alpha_bar_t as a subtraction loses that many digits to cancellation (at t = 1 it is beta_1 = 1e-4)."""
    sched = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(0)

    def body() -> list[CheckResult]:
        out = []
        for t in (1, 2, 500, 1000):
            x0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
            xt = torch.randn(5, 3, generator=g, dtype=torch.float64)
            mine = as_tensor(call(mu_tilde, sched.alpha_bars[t - 1].item(), sched.alpha_bars[t].item(),
                                  sched.betas[t].item(), x0, xt), (5, 3), "mu_tilde(...)")
            ref, _ = q_posterior(sched, x0, xt, t)
            c1, c2 = sched.posterior_mean_coef1[t], sched.posterior_mean_coef2[t]
            tol = 64 * torch.finfo(torch.float64).eps * (c1 * x0.abs() + c2 * xt.abs()) / sched.one_minus_alpha_bars[t]
            out.append(checks.bound_check(mine, ref, tol, "64 ulps of the terms / (1 - alpha_bar_t)",
                                          name=f"mu_tilde at t = {t}"))
        return out
    return verdict("Exercise (posterior mean)", body)


# --- 05_diffusion_elbo -------------------------------------------------------------------------------
__all__ += ["grade_gaussian_kl"]


def grade_gaussian_kl(gaussian_kl: Callable[..., Any]) -> Grade:
    """Exercise: the KL divergence of two one-dimensional Gaussians (Chapter 5, Eq. gauss-kl; every L_{t-1} of
    Ho et al., Eq. 5):  D_KL(N(mean_p, var_p) || N(mean_q, var_q))
    = 1/2 [log(var_q / var_p) + (var_p + (mean_p - mean_q)^2) / var_q - 1].

    The reader's ``gaussian_kl(mean_p, var_p, mean_q, var_q)`` works elementwise on tensors (variances, not log-
    variances). Two routes:
    1. Monte Carlo, as in the chapter: the mean of log P(x) - log Q(x) over n = 100,000 draws x ~ P, for the
       chapter's two pairs N(0.2, 0.09) || N(-0.1, 0.25) and N(1, 2) || N(0, 1), within 5 standard errors.
    2. ``gaussians.normal_kl`` on 12 pairs (variances from 1e-4 to 1e2, equal and unequal, means up to 3 apart,
       KL from 0 to about 50). Tolerance: 64 ulps of float64 of the sum of the terms' sizes
       |log(var_q/var_p)| + var_p/var_q + (mean_p - mean_q)^2/var_q + 1, since the terms cancel when P and Q are
       close (KL = 0 for P = Q) and a direct evaluation of the sum is accurate only to a few ulps of its terms."""
    g = torch.Generator().manual_seed(5)
    n_mc = 100_000
    f64 = torch.float64
    mp = torch.tensor([0.0, 0.3, -1.0, 2.0, 0.5, 0.0, 0.1, -0.4, 1.5, 0.0, 0.7, -2.0], dtype=f64)
    vp = torch.tensor([1.0, 0.5, 1e-4, 3.0, 0.09, 2.0, 1e-2, 0.25, 1e2, 1.0, 4e-3, 0.8], dtype=f64)
    mq = torch.tensor([0.0, -0.2, -1.0, -1.0, 0.5, 0.0, 0.1, 0.3, 0.0, 1.0, 0.7, 1.0], dtype=f64)
    vq = torch.tensor([1.0, 2.0, 2e-4, 0.5, 0.25, 1.0, 1e-4, 0.25, 1.0, 1.0, 4e-3, 0.8], dtype=f64)

    def body() -> list[CheckResult]:
        out = []
        for m1, v1, m2, v2 in [(0.2, 0.09, -0.1, 0.25), (1.0, 2.0, 0.0, 1.0)]:
            args = [torch.tensor([a], dtype=f64) for a in (m1, v1, m2, v2)]
            mine = as_tensor(call(gaussian_kl, *args), (1,), "gaussian_kl(...)")
            x = m1 + math.sqrt(v1) * torch.randn(n_mc, generator=g, dtype=f64)
            log_ratio = log_normal(x, m1, math.log(v1)) - log_normal(x, m2, math.log(v2))
            out.append(checks.mc_mean_check(log_ratio, mine,
                                            name=f"Monte Carlo KL(N({m1:g}, {v1:g}) || N({m2:g}, {v2:g})) vs yours"))
        mine = as_tensor(call(gaussian_kl, mp, vp, mq, vq), tuple(mp.shape), "gaussian_kl(...)")
        ref = normal_kl(mp, vp.log(), mq, vq.log())
        size = (vq / vp).log().abs() + vp / vq + (mp - mq) ** 2 / vq + 1
        tol = 64 * torch.finfo(f64).eps * size
        out.append(checks.bound_check(mine, ref, tol, "64 ulps of the sum of the terms' sizes",
                                      name="yours vs normal_kl on 12 pairs"))
        return out
    return verdict("Exercise (KL of two Gaussians)", body)


# --- 06_parameterizations ----------------------------------------------------------------------------
__all__ += ["grade_x0_from_eps", "grade_x0_from_v"]

_PARAM_CASES = (("linear", 1), ("linear", 2), ("linear", 500), ("linear", 1000), ("cosine", 999))


def _param_case(name: str, t: int, g: torch.Generator) -> tuple[Any, float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A schedule, alpha_bar_t, and x_0, eps ~ N(0, I) of shape (5, 3) with x_t = a_t x_0 + s_t eps (Eq. 4)."""
    sched = NoiseSchedule.linear() if name == "linear" else NoiseSchedule.cosine()
    x0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return sched, sched.alpha_bars[t].item(), x0, eps, q_sample(sched, x0, t, eps=eps)


def grade_x0_from_eps(x0_from_eps: Callable[..., Any]) -> Grade:
    """Exercise: the clean image from the noise, x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
    (Chapter 6, Eq. x0-eps: Eq. 4 of Ho et al. solved for x_0).

    The reader's ``x0_from_eps(alpha_bar_t, xt, eps)`` (alpha_bar_t a float, xt and eps tensors) is compared, at
    t = 1, 2, 500, 1000 of the linear schedule and t = 999 of the cosine one (a_t = 0.0016, where the map
    amplifies rounding most), with ``diffusion.predict_x0_from_eps`` and with the true x_0 that produced x_t.
    Tolerance: the chapter's running error bound, 64 ulps of float64 of the terms (|x_t| + s_t |eps|) / a_t,
    divided by 1 - alpha_bar_t because a reader who forms 1 - alpha_bar_t by subtraction loses that many digits
    at small t (plus the bound of x_t itself for the comparison with the true x_0)."""
    g = torch.Generator().manual_seed(6)
    ulp = 64 * torch.finfo(torch.float64).eps

    def body() -> list[CheckResult]:
        out = []
        for name, t in _PARAM_CASES:
            sched, ab, x0, eps, xt = _param_case(name, t, g)
            mine = as_tensor(call(x0_from_eps, ab, xt, eps), (5, 3), "x0_from_eps(...)")
            a, s, omab = sched.alpha_bars[t].sqrt(), sched.one_minus_alpha_bars[t].sqrt(), sched.one_minus_alpha_bars[t]
            tol = ulp * (xt.abs() + s * eps.abs()) / (a * omab)
            tol_xt = ulp * (a * x0.abs() + s * eps.abs()) / a  # x_t itself carries rounding: 1/a_t of it reaches x_0
            out.append(checks.bound_check(mine, predict_x0_from_eps(sched, xt, eps, t), tol,
                                          "64 ulps of the terms / (a_t (1 - alpha_bar_t))",
                                          name=f"{name} t = {t}: yours vs predict_x0_from_eps"))
            out.append(checks.bound_check(mine, x0, tol + tol_xt, "64 ulps of the terms / (a_t (1 - alpha_bar_t))",
                                          name=f"{name} t = {t}: yours vs the true x_0"))
        return out
    return verdict("Exercise (x_0 from the noise)", body)


def grade_x0_from_v(x0_from_velocity: Callable[..., Any]) -> Grade:
    """Exercise: the clean image from the velocity, x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v
    (Chapter 6, Eq. v-rotation: the inverse of the rotation (x_0, eps) -> (x_t, v) of Salimans & Ho 2022).

    The reader's ``x0_from_velocity(alpha_bar_t, xt, v)`` is compared, at t = 1, 2, 500, 1000 (linear schedule) and
    t = 999 (cosine), with ``diffusion.x0_from_v`` and with the true x_0 behind x_t and v = a_t eps - s_t x_0.
    Tolerance: 64 ulps of float64 of the terms a_t |x_t| + s_t |v|, divided by 1 - alpha_bar_t for a reader who
    forms 1 - alpha_bar_t by subtraction; against the true x_0 also the rounding of x_t and v (the rotation
    is well conditioned: a few dozen ulps of the terms, before the 1/(1 - alpha_bar_t) allowance)."""
    g = torch.Generator().manual_seed(7)
    ulp = 64 * torch.finfo(torch.float64).eps

    def body() -> list[CheckResult]:
        out = []
        for name, t in _PARAM_CASES:
            sched, ab, x0, eps, xt = _param_case(name, t, g)
            v = v_from_x0_eps(sched, x0, eps, t)
            mine = as_tensor(call(x0_from_velocity, ab, xt, v), (5, 3), "x0_from_velocity(...)")
            a, s, omab = sched.alpha_bars[t].sqrt(), sched.one_minus_alpha_bars[t].sqrt(), sched.one_minus_alpha_bars[t]
            tol = ulp * (a * xt.abs() + s * v.abs()) / omab
            tol_in = ulp * (a * (a * x0.abs() + s * eps.abs()) + s * (a * eps.abs() + s * x0.abs()))
            out.append(checks.bound_check(mine, x0_from_v(sched, xt, v, t), tol,
                                          "64 ulps of the terms / (1 - alpha_bar_t)",
                                          name=f"{name} t = {t}: yours vs diffusion.x0_from_v"))
            out.append(checks.bound_check(mine, x0, tol + tol_in, "64 ulps of the terms / (1 - alpha_bar_t)",
                                          name=f"{name} t = {t}: yours vs the true x_0"))
        return out
    return verdict("Exercise (x_0 from v)", body)


# --- 07_tweedie --------------------------------------------------------------------------------------
__all__ += ["grade_tweedie_denoiser"]



def grade_tweedie_denoiser(tweedie_denoiser: Callable[..., Any]) -> Grade:
    """Exercise (Chapter 7): Tweedie's formula E[x_0 | x_t] = (x_t + s^2 grad log q(x_t)) / a (eq-tweedie), with
    a = sqrt(alpha_bar_t), s^2 = 1 - alpha_bar_t, for a 1-D Gaussian mixture q(x_0) = sum_k w_k N(mu_k, v_k).

    The reader's ``tweedie_denoiser(xt, a, s2, weights, means, variances)`` (xt of shape (n,), the mixture's
    parameters of shape (K,), a and s2 floats; returns shape (n,)) is compared with
    ``GaussianMixture.posterior_mean_x0``, which enumerates the components and uses no score, on a three-component
    mixture at t = 1, 11, 101, 301, 601, 1000 of the paper's schedule, 400 draws of x_t ~ q(x_t) each. Tolerance:
    the chapter's float64 rounding budget, 64 ulps of max(1, max |x_t|) amplified by 1/a (terms of size |x_t|
    cancel in the numerator before the division by a, 157 at t = 1000), rounded up to two digits."""
    sched = NoiseSchedule.linear()
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = torch.tensor([-1.0, 0.4, 1.5], dtype=torch.float64)
    variances = torch.tensor([0.04, 0.01, 0.09], dtype=torch.float64)
    mix = GaussianMixture(weights, means[:, None], variances[:, None])
    g = torch.Generator().manual_seed(7)

    def body() -> list[CheckResult]:
        out = []
        for t in (1, 11, 101, 301, 601, 1000):
            a, s2 = math.sqrt(sched.alpha_bars[t].item()), sched.one_minus_alpha_bars[t].item()
            xt = q_sample(sched, mix.sample(400, g), t, generator=g)[:, 0]
            mine = as_tensor(call(tweedie_denoiser, xt.clone(), a, s2, weights.clone(), means.clone(),
                                  variances.clone()), (400,), f"tweedie_denoiser(...) at t = {t}")
            ref = mix.posterior_mean_x0(sched, xt[:, None], t)[:, 0]
            ulps = 64 * max(1.0, xt.abs().max().item()) / a
            unit = 10 ** (math.floor(math.log10(ulps)) - 1)
            out.append(checks.exact_check(mine, ref, ulps=math.ceil(ulps / unit) * unit,
                                          name=f"E[x0 | x_t] at t = {t}: yours vs enumeration of the components"))
        return out
    return verdict("Exercise (Tweedie's denoiser)", body)


# --- 08_training_sampling ----------------------------------------------------------------------------
__all__ += ["grade_reverse_step"]



def grade_reverse_step(reverse_step: Callable[..., Any]) -> Grade:
    """Exercise (Chapter 8): one reverse step of Algorithm 2 (eq-sampler-step),
    x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma_t z, sigma_t^2 = beta_t, z = 0 at t = 1.

    The reader's ``reverse_step(schedule, xt, eps, t, generator)`` (xt and eps of shape (n, 2); draws z itself;
    returns shape (n, 2)) gets the exact eps* of the chapter's six-component mixture (``toy.mixture``) on the
    chapter's schedule (T = 100, beta from 1e-3 to 0.2). Independent route: with eps = eps*, the mean of x_{t-1}
    is Eq. 7's mean c_1 E[x_0 | x_t] + c_2 x_t (``q_posterior`` of the enumerated posterior mean) and its variance
    is beta_t. At t = 100, 50, 10 and 2, eight points x_t each repeated 2000 times: every coordinate's sample
    variance (16 coordinates, n = 2000 each, the worst reported) within 5 standard errors and then its sample mean
    within 5 standard errors
    (known sd sqrt(beta_t)) (``mc_variance_check``, ``mc_mean_check``). At t = 1 the step is deterministic (z = 0) and must equal
    E[x_0 | x_1] to rounding: 64 ulps of the terms |x_t| + c |eps|, divided by 1 - alpha_bar_1, since a reader who
    forms 1 - alpha_bar_t by subtraction loses that many digits."""
    sched = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    gm = mixture()
    g_points = torch.Generator().manual_seed(8)
    g_reader = torch.Generator().manual_seed(80)
    n_rep, n_points = 2000, 8

    def body() -> list[CheckResult]:
        out = []
        for t in (100, 50, 10, 2):
            points = q_sample(sched, gm.sample(n_points, g_points), t, generator=g_points)
            eps_points = gm.eps_star(sched, points, t)
            xt, eps = points.repeat(n_rep, 1), eps_points.repeat(n_rep, 1)  # row i is point i % n_points
            x_prev = as_tensor(call(reverse_step, sched, xt.clone(), eps.clone(), t, g_reader),
                               (n_rep * n_points, 2), f"reverse_step(...) at t = {t}")
            mean_ref, _ = q_posterior(sched, gm.posterior_mean_x0(sched, points, t), points, t)
            beta = sched.betas[t].item()
            samples = x_prev.reshape(n_rep, n_points * 2)
            out.append(checks.mc_variance_check(samples, beta, name=f"variance of x_(t-1) at t = {t} vs beta_t"))
            out.append(checks.mc_mean_check(samples, mean_ref.reshape(-1), std=math.sqrt(beta),
                                            name=f"mean of x_(t-1) at t = {t} vs Eq. 7 with E[x0 | x_t]"))
        points = q_sample(sched, gm.sample(n_points, g_points), 1, generator=g_points)
        eps = gm.eps_star(sched, points, 1)
        x0 = as_tensor(call(reverse_step, sched, points.clone(), eps.clone(), 1, g_reader), (n_points, 2),
                       "reverse_step(...) at t = 1")
        ref = gm.posterior_mean_x0(sched, points, 1)
        coef = sched.betas[1].item() / math.sqrt(sched.one_minus_alpha_bars[1].item())
        tol = (64 * torch.finfo(torch.float64).eps * (points.abs() + coef * eps.abs())
               / (math.sqrt(sched.alphas[1].item()) * sched.one_minus_alpha_bars[1].item()))
        out.append(checks.bound_check(x0, ref, tol, "64 ulps of the terms / (1 - alpha_bar_1)",
                                      name="x_0 at t = 1 (no noise) vs E[x0 | x_1]"))
        return out
    return verdict("Exercise (one reverse step)", body)


# --- 09_bits_per_dim ---------------------------------------------------------------------------------
__all__ += ["grade_decoder_log_prob"]



def _bpd_log_probs(value: Any, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """Log-probabilities as a float64 tensor of ``shape``: -inf (a bin whose mass underflows) is allowed, NaN and
    +inf are not; anything else is a :class:`GraderInputError` saying what was wrong."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64) if not isinstance(value, torch.Tensor) else value.double()
    except (TypeError, ValueError, RuntimeError):
        raise GraderInputError(f"{name} should be a tensor of shape {shape}, got {type(value).__name__}") from None
    if tuple(t.shape) != tuple(shape):
        raise GraderInputError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if bool(torch.isnan(t).any()) or bool((t == math.inf).any()):
        raise GraderInputError(f"{name} has NaN or +inf entries (a log-probability is at most 0)")
    return t


def grade_decoder_log_prob(decoder_log_prob: Callable[..., Any]) -> Grade:
    """Exercise (Chapter 9): the discretized Gaussian decoder of Ho et al. (2020), Eq. 13 (eq-discretized-decoder):
    log of the mass of N(mean, sd^2) in the bin [x - 1/255, x + 1/255] of each level x = k / 127.5 - 1, with the
    first bin extended to -inf and the last to +inf.

    The reader's ``decoder_log_prob(x, mean, sd)`` (x: the 256 levels, a float64 tensor of shape (256,); mean, sd:
    floats; returns the 256 log-probabilities, -inf allowed where a mass underflows) is run on seven decoders
    (wide and narrow, in the bulk and at both edges). Two checks each, the chapter's: (1) the 256 probabilities
    sum to 1 to 256 ulps of float64 (Check 1b); (2) every probability equals that of
    ``gaussians.discretized_log_normal`` to 64 ulps of float64 in absolute terms (a probability is a difference
    of two normal CDFs, each rounded to a few ulps of 1)."""
    grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    decoders = [(0.0, 1.0), (0.3, 0.02), (-0.45, 0.004), (0.97, 0.03), (-0.99, 0.1), (1.3, 0.5), (0.02, 3.0)]

    def body() -> list[CheckResult]:
        out = []
        for mean, sd in decoders:
            logp = _bpd_log_probs(call(decoder_log_prob, grid.clone(), mean, sd), (256,),
                                  f"decoder_log_prob(x, {mean}, {sd})")
            probs = logp.exp()
            ref = discretized_log_normal(grid, torch.tensor(mean, dtype=torch.float64), 2 * math.log(sd)).exp()
            out.append(checks.exact_check(probs.sum(), 1.0, ulps=256,
                                          name=f"sum of the 256 probabilities, mean {mean}, sd {sd}"))
            out.append(checks.exact_check(probs, ref, ulps=64,
                                          name=f"bin probabilities vs discretized_log_normal, mean {mean}, sd {sd}"))
        return out
    return verdict("Exercise (the discretized decoder)", body)


# --- 10_faster_sampling ------------------------------------------------------------------------------
__all__ += ["grade_ddim_step"]


def grade_ddim_step(ddim_step_fn: Callable[..., Any]) -> Grade:
    """Exercise: one generalized DDIM step (Song et al. 2021, Eq. 12; Chapter 10, eq-ddim-step, with sigma_t(eta) of
    Eq. 16, eq-eta-family):

        x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps + sigma z,
        x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).

    The reader's ``ddim_step(alpha_bar_t, alpha_bar_prev, eps, xt, eta, z)`` (floats, then (n, 2) tensors, eta a
    float, z the standard normal draw) is checked on Chapter 10's chain (T = 200, beta linear from 5e-4 to 0.1):

    1. the marginal it must preserve (thm-ddim-marginals): fed the true noise of x_t ~ q(x_t | x_0) for a fixed x_0,
       x_prev has mean sqrt(alpha_bar_prev) x_0 and variance 1 - alpha_bar_prev, within 5 standard errors of
       n = 100,000 draws (mc_mean_check, mc_variance_check), on 101 -> 100 (eta = 0.5) and 121 -> 41 (eta = 1);
    2. equality with ``diffusion.ddim_step`` fed the same z, at eta = 0, 0.5, 1 on consecutive, strided and last
       (t_prev = 0) steps. Tolerance: 64 ulps of float64 of the sum of the absolute terms (x0_hat's two terms
       scaled by sqrt(alpha_bar_prev / alpha_bar_t), the direction and the noise), divided by the smallest of
       1 - alpha_bar_t and 1 - alpha_bar_t / alpha_bar_prev, because a reader who forms these by subtraction loses
       that many digits (at t = 1, 1 - alpha_bar_1 = 5e-4)."""
    sched = NoiseSchedule.linear(T=200, beta_1=5e-4, beta_T=0.1)
    eps64 = torch.finfo(torch.float64).eps

    def ab(t: int) -> float:
        return sched.alpha_bars[t].item()

    def body() -> list[CheckResult]:
        out = []
        n = 100_000
        x0 = torch.tensor([0.5, -0.3], dtype=torch.float64).expand(n, 2)
        for (t, s, eta), seed in zip(((101, 100, 0.5), (121, 41, 1.0)), (1, 2)):
            g = torch.Generator().manual_seed(seed)
            eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
            xt = math.sqrt(ab(t)) * x0 + sched.one_minus_alpha_bars[t].sqrt() * eps
            z = torch.randn(n, 2, generator=g, dtype=torch.float64)
            xs = as_tensor(call(ddim_step_fn, ab(t), ab(s), eps, xt, eta, z), (n, 2), "ddim_step(...)")
            out.append(checks.mc_mean_check(xs, math.sqrt(ab(s)) * x0[0],
                                            name=f"{t} -> {s}, eta = {eta:g}: mean of x_prev vs sqrt(alpha_bar_prev) x0"))
            out.append(checks.mc_variance_check(
                xs, torch.full((2,), sched.one_minus_alpha_bars[s].item(), dtype=torch.float64),
                name=f"{t} -> {s}, eta = {eta:g}: variance of x_prev vs 1 - alpha_bar_prev"))
        g = torch.Generator().manual_seed(3)
        for t, s in ((2, 1), (101, 100), (121, 41), (200, 101), (41, 0), (1, 0)):
            for eta in (0.0, 0.5, 1.0):
                xt = torch.randn(5, 2, generator=g, dtype=torch.float64)
                eps = torch.randn(5, 2, generator=g, dtype=torch.float64)
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
                z = torch.randn(5, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
                ref = ddim_step(sched, eps, xt, t, s, eta=eta, generator=torch.Generator().manual_seed(seed))
                mine = as_tensor(call(ddim_step_fn, ab(t), ab(s), eps.clone(), xt.clone(), eta, z.clone()), (5, 2),
                                 "ddim_step(...)")
                a_t, a_s = ab(t), ab(s)
                sig = 1.0 - a_s if s > 0 else 0.0
                terms = (math.sqrt(a_s / a_t) * (xt.abs() + math.sqrt(1 - a_t) * eps.abs())
                         + math.sqrt(max(1 - a_s, 0.0)) * eps.abs() + math.sqrt(sig) * z.abs())
                cancel = min(1 - a_t, 1 - a_t / a_s)
                out.append(checks.bound_check(mine, ref, 64 * eps64 * terms / cancel,
                                              "64 ulps of the terms / min(1 - abar_t, 1 - abar_t / abar_prev)",
                                              name=f"{t} -> {s}, eta = {eta:g}: x_prev vs diffusion.ddim_step"))
        return out
    return verdict("Exercise (one DDIM step)", body)


# --- 11_langevin_sde ---------------------------------------------------------------------------------
__all__ += ["grade_langevin_step", "grade_pf_ode_drift"]


def grade_langevin_step(langevin_step: Callable[..., Any]) -> Grade:
    """Exercise: one step of the unadjusted Langevin algorithm (Chapter 11, eq-sde-langevin-step; Song & Ermon 2019,
    Eq. 4), x <- x + (h / 2) score(x) + sqrt(h) z.

    The reader's ``langevin_step(x, score, h, z)`` (x of shape (n, d), ``score`` a callable, h > 0, z the standard
    normal draw) is checked twice:

    1. the stationary variance of eq-sde-langevin-bias, v(h) = s^2 / (1 - h / (4 s^2)): 100,000 chains on
       N(0, s^2) with s^2 = 0.5 and h = 0.2, run for a time 15 (75 steps; the start, drawn from N(0, s^2), is
       forgotten up to a factor e^{-15}), have a sample variance within 5 standard errors of v(h)
       (mc_variance_check; it tells v(h) = 0.556 from the target s^2 = 0.5, about 22 standard errors away);
    2. one step equals ``sde.langevin`` (one step, the same z) on 2-D points with the exact score of Chapter 11's
       mixture blurred to t = 0.15, h = 0.05 and 0.2, within 64 ulps of float64 of |x| + |h score / 2| + |sqrt(h) z|
       (a few roundings)."""
    eps64 = torch.finfo(torch.float64).eps

    def body() -> list[CheckResult]:
        out = []
        s2, h, n = 0.5, 0.2, 100_000
        g = torch.Generator().manual_seed(3)
        x = math.sqrt(s2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
        for _ in range(round(15 / h)):
            z = torch.randn(n, 1, generator=g, dtype=torch.float64)
            x = as_tensor(call(langevin_step, x, lambda y: -y / s2, h, z), (n, 1), "langevin_step(...)")
        out.append(checks.mc_variance_check(x, s2 / (1 - h / (4 * s2)),
                                            name=f"N(0, {s2:g}), h = {h:g}: stationary variance vs s^2 / (1 - h/(4 s^2))"))
        q = sde.vp_marginal(mixture(), 0.15)
        for h in (0.05, 0.2):
            x = q.sample(50, torch.Generator().manual_seed(4))
            z = torch.randn(50, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
            ref = sde.langevin(x, q.score, h, 1, torch.Generator().manual_seed(5))
            mine = as_tensor(call(langevin_step, x.clone(), q.score, h, z.clone()), (50, 2), "langevin_step(...)")
            tol = 64 * eps64 * (x.abs() + 0.5 * h * q.score(x).abs() + math.sqrt(h) * z.abs())
            out.append(checks.bound_check(mine, ref, tol, "64 ulps of the terms",
                                          name=f"h = {h:g}: one step vs sde.langevin with the same z"))
        return out
    return verdict("Exercise (one Langevin step)", body)


def grade_pf_ode_drift(pf_ode_drift: Callable[..., Any]) -> Grade:
    """Exercise: the velocity of the probability-flow ODE of the VP SDE (Chapter 11, eq-sde-pf-ode; Song et al.
    2021, Eq. 13), dx/dt = f(x, t) - g(t)^2 score(x, t) / 2 = -beta(t) (x + score(x, t)) / 2.

    The reader's ``pf_ode_drift(x, t, score)`` (x of shape (n, 2), t a float in [0, 1], ``score(x, t)`` a callable)
    is compared with ``sde.pf_ode_drift`` fed the exact score of Chapter 11's mixture diffused to time t
    (``sde.vp_marginal``), at 40 points drawn from q(x_t) for t = 0, 0.05, 0.3, 0.7, 1 (the two ends included: beta(t)
    runs from 0.1 to 20). Tolerance: 64 ulps of float64 of |f| + |g^2 score / 2|, the size of the two terms before
    they partly cancel (a few roundings each)."""
    gm = mixture()
    eps64 = torch.finfo(torch.float64).eps

    def score(x: torch.Tensor, t: float) -> torch.Tensor:
        return sde.vp_marginal(gm, t).score(x)

    def body() -> list[CheckResult]:
        out = []
        g = torch.Generator().manual_seed(6)
        for t in (0.0, 0.05, 0.3, 0.7, 1.0):
            x = sde.vp_marginal(gm, t).sample(40, g)
            ref = sde.pf_ode_drift(x, t, score)
            mine = as_tensor(call(pf_ode_drift, x.clone(), t, score), (40, 2), "pf_ode_drift(...)")
            beta = sde.vp_diffusion(t).item() ** 2
            tol = 64 * eps64 * 0.5 * beta * (x.abs() + score(x, t).abs())
            out.append(checks.bound_check(mine, ref, tol, "64 ulps of |f| + |g^2 score / 2|",
                                          name=f"t = {t:g}: velocity vs sde.pf_ode_drift"))
        return out
    return verdict("Exercise (the probability-flow velocity)", body)


# --- 12_flow_matching --------------------------------------------------------------------------------
__all__ += ["grade_straight_velocity", "grade_continuous_bound"]


def grade_straight_velocity(straight_velocity: Callable[..., Any]) -> Grade:
    """Exercise: the interpolant velocity of the straight path a_t = 1 - t, s_t = t (Chapter 12, eq-fm-velocity),
    written with the posterior mean: v(x, t) = E[eps - x_0 | x_t = x] = (x - E[x_0 | x_t = x]) / t for t > 0.

    The reader's ``straight_velocity(x, t, x0_hat)`` (x of shape (n, 2), t in (0, 1], x0_hat = E[x_0 | x_t = x] of
    the same shape) is compared with ``flows.mixture_velocity(..., path="straight")``, a separate route
    (a_t' E[x_0 | x] + s_t s_t' sum_k p(k | x) C_k^{-1} (x - a_t mu_k)), for Chapter 12's six-component mixture at
    50 points drawn from q(x_t), t = 0.02, 0.1, 0.5, 0.9, 1 (x0_hat from ``flows.mixture_posterior_means``).
    Tolerance: 64 ulps of float64 of the terms, (|x| + |x0_hat|) / t + |x0_hat| + t sum_k p(k | x) |C_k^{-1}(x - a mu_k)|,
    times 1 + L for the responsibilities' log-densities of size L (the allowance of Chapter 12's Section 12.1 check;
    the division by t is the cancellation of x - x0_hat at small t)."""
    gm = mixture()
    eps64 = torch.finfo(torch.float64).eps
    var0 = gm.covs[0, 0, 0].item()
    eye = torch.eye(2, dtype=torch.float64)

    def body() -> list[CheckResult]:
        out = []
        g = torch.Generator().manual_seed(7)
        for t in (0.02, 0.1, 0.5, 0.9, 1.0):
            a, s = 1.0 - t, t
            q = type(gm)(gm.weights, a * gm.means, a * a * gm.covs + s * s * eye)
            x = q.sample(50, g)
            x0_hat, _ = flows.mixture_posterior_means(gm, x, a, s)
            ref = flows.mixture_velocity(gm, x, t, "straight")
            mine = as_tensor(call(straight_velocity, x.clone(), t, x0_hat.clone()), (50, 2), "straight_velocity(...)")
            r = q.responsibilities(x).unsqueeze(-1)
            y = (x.unsqueeze(-2) - a * gm.means).abs() / (a * a * var0 + s * s)
            L = (q.component_log_probs(x) - torch.log(gm.weights)).abs().amax(-1, keepdim=True)
            terms = (x.abs() + x0_hat.abs()) / t + x0_hat.abs() + t * (r * y).sum(-2)
            out.append(checks.bound_check(mine, ref, 64 * eps64 * terms * (1 + L),
                                          "64 ulps of the terms x (1 + L)",
                                          name=f"t = {t:g}: velocity vs flows.mixture_velocity (straight)"))
        return out
    return verdict("Exercise (the straight-path velocity)", body)


def grade_continuous_bound(continuous_bound: Callable[..., Any]) -> Grade:
    """Exercise: the continuous-time bound for Gaussian data (Chapter 12, eq-fm-continuous-bound; Kingma et al.
    2021, Eq. 18): L_inf = (1/2) int_{SNR_min}^{SNR_max} mmse(gamma) d gamma with mmse(gamma) = s^2 / (1 + gamma s^2),
    i.e. (1/2) log((1 + s^2 SNR_max) / (1 + s^2 SNR_min)) nats per coordinate.

    The reader's ``continuous_bound(snr_min, snr_max, data_var)`` (floats; data_var = s^2) is checked:

    1. against the trapezoid rule for (1/2) int mmse d gamma on 2e5 intervals of log gamma (the integrand
       (1/2) gamma mmse(gamma) in nu = log gamma), within the trapezoid error bound (``checks.trapezoid``) plus
       64 ulps per interval, for the chapter's endpoints SNR_min = 4.32e-5, SNR_max = 9095 and s^2 = 0.09;
    2. against ``flows.continuous_vlb_gaussian`` at four (SNR_min, SNR_max, s^2), SNR_min = 0 included, within
       64 ulps of float64 (exact_check): log(1 + u) - log(1 + w) written either way is exact to a few ulps of
       max(1, L_inf)."""
    eps64 = torch.finfo(torch.float64).eps

    def body() -> list[CheckResult]:
        out = []
        lo, hi, v = 4.32e-5, 9095.0, 0.09
        mine = as_tensor(call(continuous_bound, lo, hi, v), (), "continuous_bound(...)")
        nu = torch.linspace(math.log(lo), math.log(hi), 200_001, dtype=torch.float64)
        gamma = torch.exp(nu)
        val, err = checks.trapezoid(nu, 0.5 * gamma * flows.gaussian_mmse(gamma, v))
        out.append(checks.bound_check(mine, val, err, "trapezoid error bound, 2e5 intervals",
                                      rounding_floor=2e5 * 64 * eps64 * abs(val),
                                      name="SNR 4.32e-5 .. 9095, s^2 = 0.09: L_inf vs (1/2) int mmse d gamma"))
        for lo, hi, v in ((4.32e-5, 9095.0, 0.09), (0.0, 50.0, 0.25), (0.01, 100.0, 1.0), (1.0, 2.0, 4.0)):
            mine = as_tensor(call(continuous_bound, lo, hi, v), (), "continuous_bound(...)")
            out.append(checks.exact_check(mine, flows.continuous_vlb_gaussian(lo, hi, v),
                                          name=f"SNR {lo:g} .. {hi:g}, s^2 = {v:g}: L_inf vs flows.continuous_vlb_gaussian"))
        return out
    return verdict("Exercise (the continuous-time bound)", body)


# --- 13_digits ---------------------------------------------------------------------------------------
__all__ += ["grade_independent_pixel_bits"]



def grade_independent_pixel_bits(independent_pixel_bits: Callable[..., Any]) -> Grade:
    """Exercise (Chapter 13): the bits/dim of the independent-pixel baseline,
    -(1/64) sum_j log2 P_j(k_j), with P_j the level histogram of pixel j (Section 13.6).

    The reader's ``independent_pixel_bits(levels, probs)`` takes integer levels (N, 1, 8, 8) in 0..K-1 (a torch
    int64 tensor) and per-pixel probabilities ``probs`` (64, K) (a float64 tensor, rows summing to 1) and returns
    the N bits/dim. Checks: (1) the uniform model, probs = 1/K everywhere, gives exactly log2 K for every image
    (K = 17 and K = 256); (2) on 40 random images with histograms of random levels (one pseudo-count per cell,
    as in the chapter), the result equals ``ddpm_lab.digits.independent_pixel_bits``. Tolerance: 64 ulps of
    float64 of the value (a mean of 64 logarithms: a sum in another order, or log then divide by ln 2, differs
    by a few ulps)."""
    g = torch.Generator().manual_seed(13)

    def body() -> list[CheckResult]:
        out = []
        for K in (17, 256):
            levels = torch.randint(0, K, (5, 1, 8, 8), generator=g)
            probs = torch.full((64, K), 1.0 / K, dtype=torch.float64)
            mine = as_tensor(call(independent_pixel_bits, levels, probs), (5,), "independent_pixel_bits(...)")
            out.append(checks.exact_check(mine, torch.full((5,), math.log2(K), dtype=torch.float64),
                                          name=f"uniform on {K} levels: bits/dim = log2 {K}"))
        K = 17
        train = torch.randint(0, K, (200, 1, 8, 8), generator=g)
        probs = _level_histograms(train, K, pseudo_count=1.0)
        levels = torch.randint(0, K, (40, 1, 8, 8), generator=g)
        mine = as_tensor(call(independent_pixel_bits, levels.clone(), torch.from_numpy(probs.copy())), (40,),
                         "independent_pixel_bits(...)")
        out.append(checks.exact_check(mine, _independent_pixel_bits_ref(levels, probs),
                                      name="histogram model vs ddpm_lab.digits.independent_pixel_bits"))
        return out
    return verdict("Exercise (independent-pixel bits/dim)", body)


# --- 14_cifar10 --------------------------------------------------------------------------------------
__all__ += ["grade_sinusoidal_embedding", "grade_ema_warmup", "grade_frechet_distance"]



def grade_sinusoidal_embedding(sinusoidal_embedding: Callable[..., Any]) -> Grade:
    """Exercise (Chapter 14): the sinusoidal time embedding of the U-Net (Section 14.2; Ho et al. 2020, Sec. 4,
    after Vaswani et al. 2017): e(t) = [cos(t w_0), ..., cos(t w_{h-1}), sin(t w_0), ..., sin(t w_{h-1})] with
    w_i = 10000^(-i/h), h = dim/2.

    The reader's ``sinusoidal_embedding(t, dim)`` takes integer timesteps t (B,) (an int64 tensor) and returns
    (B, dim). Checks: (1) at t = 0 the embedding is [1, ..., 1, 0, ..., 0] exactly (to 4 ulps); (2) at t in
    {1, 2, 10, 500, 999, 1000} and dim 128 and 32 it equals ``ddpm_lab.toy.sinusoidal_embedding``. Tolerance, per
    entry: 4 eps_32 (1 + t w_i (|ln w_i| + 3)), the float32 rounding of the argument t w_i (w_i computed as an
    exponential of a rounded exponent carries |ln w_i| + 2 ulps, the product one more), so a float64
    implementation and a float32 one both pass."""
    eps32 = torch.finfo(torch.float32).eps

    def body() -> list[CheckResult]:
        out = []
        zero = as_tensor(call(sinusoidal_embedding, torch.zeros(3, dtype=torch.long), 16), (3, 16),
                         "sinusoidal_embedding(t = 0, dim = 16)")
        expected = torch.cat([torch.ones(3, 8), torch.zeros(3, 8)], 1).double()
        out.append(checks.exact_check(zero, expected, ulps=4, dtype=torch.float32, name="e(0) = [1, ..., 1, 0, ..., 0]"))
        t = torch.tensor([1, 2, 10, 500, 999, 1000])
        for dim in (128, 32):
            mine = as_tensor(call(sinusoidal_embedding, t.clone(), dim), (len(t), dim),
                             f"sinusoidal_embedding(t, dim = {dim})")
            ref = _sinusoidal_embedding_ref(t, dim).double()
            h = dim // 2
            w = torch.exp(-math.log(10_000.0) * torch.arange(h, dtype=torch.float64) / h)
            arg = t.double()[:, None] * w[None]
            tol_half = 4 * eps32 * (1 + arg * (w.log().abs() + 3))
            out.append(checks.bound_check(mine, ref, torch.cat([tol_half, tol_half], 1),
                                          "float32 rounding of t w_i", name=f"e(t) vs the U-Net's, dim {dim}"))
        return out
    return verdict("Exercise (sinusoidal time embedding)", body)


def _ema_residual(rho: float, n: int) -> float:
    """prod_{k<n} min(rho, (1+k)/(10+k)) = rho^(n-m) / C(m+9, 9), m the number of ramp steps among the first n."""
    m = 0
    while m < n and (1 + m) / (10 + m) < rho:
        m += 1
    return rho ** (n - m) / math.comb(m + 9, 9)


def grade_ema_warmup(ema_update: Callable[..., Any]) -> Grade:
    """Exercise (Chapter 14): the EMA of the weights (Eq. eq-ema) with a warm-up of its decay,
    rho_n = min(rho, (1 + n)/(10 + n)) at update n = 0, 1, 2, ... (TensorFlow's ExponentialMovingAverage with
    num_updates): ema <- rho_n ema + (1 - rho_n) theta.

    The reader's ``ema_update(ema, theta, rho, n)`` (float64 tensors ema, theta; floats rho; int n) returns the new
    EMA. Checks: (1) one update at n = 0, 3 and 10^4, with random ema and theta, equals the formula to 64 ulps;
    (2) the residual closed form: with the weights held at theta* from the start, the EMA's distance to them after
    n updates is prod_{k<n} rho_k (ema_0 - theta*) = rho^(n-m) / C(m+9, 9) (ema_0 - theta*), m = the updates still
    on the ramp (the ramp's product telescopes to 9! n! / (n+9)!). By linearity theta* = 0 loses nothing and keeps
    the residual free of cancellation; checked relative to ema_0 at n = 1, 2, 10, ..., 1000 for rho = 0.9 and 0.99.
    Tolerance: 4 eps sum_{k<n} (1 + 2 / rho_k), the rounding of each update (two products and a sum, the lerp form
    ema + (1 - rho_k)(theta - ema) amplifying it by up to 1/rho_k)."""
    eps = torch.finfo(torch.float64).eps
    g = torch.Generator().manual_seed(14)

    def body() -> list[CheckResult]:
        out = []
        for rho, n in ((0.99, 0), (0.9, 3), (0.9999, 10_000)):
            e = torch.randn(6, generator=g, dtype=torch.float64)
            th = torch.randn(6, generator=g, dtype=torch.float64)
            r = min(rho, (1 + n) / (10 + n))
            mine = as_tensor(call(ema_update, e.clone(), th.clone(), rho, n), (6,), "ema_update(...)")
            out.append(checks.exact_check(mine, r * e + (1 - r) * th, name=f"one update, rho = {rho}, n = {n}"))
        for rho, stops in ((0.9, (1, 2, 10, 80, 81, 300)), (0.99, (1, 10, 100, 890, 1000))):
            ema0 = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
            ema, target = ema0.clone(), torch.zeros(4, dtype=torch.float64)
            acc = 0.0
            for n in range(max(stops)):
                acc += 1 + 2 / min(rho, (1 + n) / (10 + n))
                ema = as_tensor(call(ema_update, ema, target, rho, n), (4,), "ema_update(...)")
                if n + 1 in stops:
                    out.append(checks.bound_check(ema / ema0, _ema_residual(rho, n + 1), 4 * eps * acc * _ema_residual(rho, n + 1),
                                                  f"rounding of {n + 1} updates",
                                                  name=f"residual after {n + 1} updates, rho = {rho}"))
        return out
    return verdict("Exercise (EMA with warm-up)", body)


def grade_frechet_distance(frechet_distance: Callable[..., Any]) -> Grade:
    """Exercise (Chapter 14): the Frechet distance of two Gaussians (Eq. eq-frechet),
    ||m_1 - m_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}).

    The reader's ``frechet_distance(mu1, sigma1, mu2, sigma2)`` takes numpy arrays (d,) and (d, d) and returns a
    number. Checks: (1) in one dimension it is the closed form (m_1 - m_2)^2 + (s_1 - s_2)^2, s the standard
    deviations; (2) for diagonal covariances, ||m_1 - m_2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2; (3) for two random
    full covariances in d = 6 (eigenvalues in [0.5, 5]), ``ddpm_lab.metrics.frechet_distance``; (4) a Gaussian is at
    distance 0 from itself. Tolerance: 64 d kappa eps (1 + tr S_1 + tr S_2 + ||m_1 - m_2||^2), kappa = 10 the
    covariances' condition number: a matrix square root (scipy's sqrtm, or an eigendecomposition) is accurate to
    about d kappa eps relative to the matrices it is taken of."""
    eps = torch.finfo(torch.float64).eps
    rng = np.random.default_rng(14)

    def tol(d: int, m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> float:
        return 64 * d * 10 * eps * (1 + np.trace(s1) + np.trace(s2) + float((m1 - m2) @ (m1 - m2)))

    def cov(d: int) -> np.ndarray:
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        return (q * rng.uniform(0.5, 5.0, d)) @ q.T

    def one(name: str, m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray, expected: float) -> CheckResult:
        d = len(m1)
        mine = as_tensor(call(frechet_distance, m1.copy(), s1.copy(), m2.copy(), s2.copy()), (), "frechet_distance(...)")
        return checks.bound_check(mine, expected, tol(d, m1, s1, m2, s2), f"64 d kappa eps, d = {d}", name=name)

    def body() -> list[CheckResult]:
        out = []
        m1, m2, sd1, sd2 = 0.3, -1.1, 0.7, 2.0
        out.append(one("1-D: (m1 - m2)^2 + (s1 - s2)^2", np.array([m1]), np.array([[sd1**2]]), np.array([m2]),
                       np.array([[sd2**2]]), (m1 - m2) ** 2 + (sd1 - sd2) ** 2))
        a, b = rng.uniform(0.5, 5.0, 4), rng.uniform(0.5, 5.0, 4)
        mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
        out.append(one("diagonal: |m1 - m2|^2 + sum (sqrt a - sqrt b)^2", mu1, np.diag(a), mu2, np.diag(b),
                       float((mu1 - mu2) @ (mu1 - mu2) + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())))
        s1, s2 = cov(6), cov(6)
        mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
        out.append(one("full covariances vs ddpm_lab.metrics.frechet_distance", mu1, s1, mu2, s2,
                       _frechet_distance_ref(mu1, s1, mu2, s2)))
        out.append(one("a Gaussian and itself: 0", mu1, s1, mu1, s1, 0.0))
        return out
    return verdict("Exercise (Frechet distance of two Gaussians)", body)
