"""The discretized Gaussian decoder (Ho et al. 2020, Eq. 13): normalization, tails, accuracy, bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ddpm_lab.checks import exact_check
from ddpm_lab.gaussians import discretized_log_normal

GRID = torch.linspace(-1, 1, 256, dtype=torch.float64)


@pytest.mark.parametrize("mean", [-5.0, -1.0, -0.3, 0.0, 0.999, 1.0, 3.0])
@pytest.mark.parametrize("logvar", [-60.0, -20.0, -8.0, 0.0, 5.0, 30.0])
def test_bin_probabilities_sum_to_one_and_are_finite(mean, logvar):
    lp = discretized_log_normal(GRID, torch.tensor(mean), torch.tensor(logvar))
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    total = torch.logsumexp(lp, 0).exp().item()
    assert abs(total - 1.0) <= 256 * np.finfo(np.float64).eps * 4, total  # a sum of 256 rounded terms


def test_matches_cdf_differences_where_those_are_accurate():
    mean, sd = 0.1, 0.2
    lp = discretized_log_normal(GRID, torch.tensor(mean, dtype=torch.float64), 2 * math.log(sd))
    x = GRID.numpy()
    edges_hi = np.where(x >= 1 - 1e-9, np.inf, x + 1 / 255)
    edges_lo = np.where(x <= -1 + 1e-9, -np.inf, x - 1 / 255)
    ref = np.log(stats.norm(mean, sd).cdf(edges_hi) - stats.norm(mean, sd).cdf(edges_lo))
    exact_check(lp[100:160], ref[100:160], ulps=1e6, name="log P(bin), bulk").assert_ok()


def test_far_tails_use_the_right_asymptotics():
    # a bin 40 sds above the mean: log P ~ log pdf(mid) + log(width / sd) when the bin is narrow in sd units
    x = GRID[191:192]  # 0.498..., a grid level
    sd = x.item() / 40
    lp = discretized_log_normal(x, 0.0, 2 * math.log(sd))
    lo, hi = (x.item() - 1 / 255) / sd, (x.item() + 1 / 255) / sd
    ref = stats.norm.logsf(lo) + math.log(-math.expm1(stats.norm.logsf(hi) - stats.norm.logsf(lo)))
    assert abs(lp.item() - ref) < 1e-9 * abs(ref)


def test_float32_inputs_are_safe():
    lp = discretized_log_normal(GRID.float(), torch.full((256,), 0.7), torch.full((256,), -25.0))
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\].*got 1.5"):
        discretized_log_normal(torch.tensor([0.0, 1.5]), torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match="logvar must be finite"):
        discretized_log_normal(torch.tensor([1.0]), torch.tensor(0.0), torch.tensor(-float("inf")))
    with pytest.raises(ValueError, match="must lie on the grid of 256 levels"):
        discretized_log_normal(torch.tensor([0.0]), torch.tensor(0.0), torch.tensor(0.0))  # 0 is between two levels
    with pytest.raises(ValueError, match="bins must be >= 2"):
        discretized_log_normal(torch.tensor([1.0]), torch.tensor(0.0), torch.tensor(0.0), bins=1)
