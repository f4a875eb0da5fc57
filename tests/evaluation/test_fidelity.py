"""FID / KID distances (against torchmetrics and scipy), bootstrap intervals, precision / recall /
density / coverage (against the authors' prdc package), and feature extractors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from prdc import compute_prdc
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd
from torchvision.models import resnet18

from thyroaug.contract import CLASSES
from thyroaug.errors import ConfigError
from thyroaug.evaluation.fidelity import (
    InceptionFeatures,
    ResNet18Features,
    bootstrap_fid_kid,
    default_extractors,
    fidelity_metrics,
    frechet_distance,
    group_fidelity,
    kernel_inception_distance,
    kid_subsets,
    prdc,
    recentred_interval,
)
from thyroaug.evaluation.table3 import QUANTITIES, metric_key
from thyroaug.utils.resize import resize_images


@pytest.fixture(autouse=True)
def _one_thread():
    """Shared cores: oversubscribed BLAS threads (scipy's sqrtm) slow these tests 5-10x; torch's
    own thread count is set once in conftest."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


class Identity(nn.Module):
    """A torchmetrics "feature extractor" that passes feature vectors through."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def features(n_real: int, n_fake: int, dim: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n_real, dim, generator=g, dtype=torch.float64)
    mix = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    fake = torch.randn(n_fake, dim, generator=g, dtype=torch.float64) @ mix + 0.3
    return real, fake


@pytest.mark.parametrize(("n", "dim"), [(300, 16), (200, 512)])
def test_fid_equals_torchmetrics(n, dim):
    real, fake = features(n, n + 11, dim)
    metric = FrechetInceptionDistance(feature=Identity(dim))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())
    direct = float(_compute_fid(real.mean(0), real.T.cov(), fake.mean(0), fake.T.cov()))
    ours = frechet_distance(real, fake)
    rtol = 1e-10 if n > dim else 1e-6  # rank-deficient covariances: eigen noise in torchmetrics
    assert ours == pytest.approx(expected, rel=rtol)
    assert ours == pytest.approx(direct, rel=rtol)


def test_fid_basic_properties():
    real, _ = features(400, 10, 8)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)
    wide, _ = features(20, 10, 256)  # rank-deficient covariance: still exactly zero
    assert frechet_distance(wide * 100, wide * 100) == pytest.approx(0.0, abs=1e-6)
    shift = torch.zeros(8, dtype=torch.float64)
    shift[0] = 3.0
    assert frechet_distance(real, real + shift) == pytest.approx(9.0, rel=1e-9)
    with pytest.raises(ConfigError, match="feature sizes"):
        frechet_distance(real, real[:, :4])
    with pytest.raises(ConfigError, match="N >= 2"):
        frechet_distance(real[:1], real)


@pytest.mark.parametrize(("n", "dim", "subset"), [(120, 16, 50), (200, 64, 200)])
def test_kid_equals_torchmetrics(n, dim, subset):
    real, fake = features(n, n + 7, dim)
    metric = KernelInceptionDistance(feature=Identity(dim), subsets=9, subset_size=subset)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    torch.manual_seed(42)
    mean, std = metric.compute()
    ours_mean, ours_std = kernel_inception_distance(
        real, fake, subsets=9, subset_size=subset, seed=42
    )
    assert ours_mean == pytest.approx(float(mean), rel=1e-10)
    assert ours_std == pytest.approx(float(std), rel=1e-8)
    pairs = kid_subsets(len(real), len(fake), 9, subset, seed=42)
    each = [float(poly_mmd(real[r], fake[f])) for r, f in pairs]
    assert ours_mean == pytest.approx(np.mean(each), rel=1e-10)


def test_kid_caps_subset_size_and_is_near_zero_for_one_distribution():
    real, _ = features(150, 10, 8)
    other, _ = features(150, 10, 8, seed=2)
    mean, std = kernel_inception_distance(real, other, subsets=20, subset_size=1000)
    assert abs(mean) < 0.05 and std >= 0
    _, far = features(150, 150, 8)
    assert kernel_inception_distance(real, far, subsets=20)[0] > 10 * abs(mean)


def test_random_resnet18_fallback_is_named_and_deterministic():
    images = torch.rand(3, 1, 32, 32)
    a, b = ResNet18Features(), ResNet18Features()
    assert a.name == "resnet18-random" and a.in_channels == 3
    fa = a(images)
    assert fa.shape == (3, 512) and fa.dtype == np.float64
    assert np.array_equal(fa, b(images))


def test_resnet18_from_a_module_reads_the_pool_layer():
    model = resnet18(weights=None, num_classes=4)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    model.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 4))
    ext = ResNet18Features(model)
    assert ext.name == "resnet18-O" and ext.in_channels == 1
    images = torch.rand(2, 1, 32, 32)
    got = ext(images)
    body = nn.Sequential(*list(model.children())[:-1]).eval()
    with torch.no_grad():
        expected = body(images).flatten(1).double().numpy()
    assert np.allclose(got, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="AdaptiveAvgPool2d"):
        ResNet18Features(nn.Sequential(nn.Conv2d(1, 2, 3)))


@pytest.mark.slow
def test_resnet18_from_an_mlflow_uri(tracking_home):
    import mlflow

    model = resnet18(weights=None, num_classes=4).eval()
    example = np.zeros((2, 3, 32, 32), dtype=np.float32)  # as the classifier logs its model
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="classifier", input_example=example)
    ext = ResNet18Features(info.model_uri)
    assert ext.name == "resnet18-O" and ext.in_channels == 3
    images = torch.rand(3, 1, 32, 32)
    assert np.allclose(ext(images), ResNet18Features(model)(images), atol=1e-5)
    assert ext.input_size == 32  # read from the logged signature
    # any other size is resized to the extractor's input (an exported model takes only 32 px)
    big = torch.rand(2, 1, 128, 128)
    assert np.allclose(ext(big), ResNet18Features(model)(resize_images(big, 32)), atol=1e-5)
    assert ext(torch.rand(1, 1, 16, 16)).shape == (1, 512)
    with pytest.raises(ConfigError, match="cannot load"):
        ResNet18Features("runs:/0123456789abcdef/none")


def test_inception_is_skipped_without_local_weights(monkeypatch, caplog):
    monkeypatch.delenv("THYROAUG_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("THYROAUG_WEIGHTS_DIR", raising=False)
    with pytest.raises(ConfigError, match="never downloaded"):
        InceptionFeatures()
    extractors = default_extractors()
    assert [e.name for e in extractors] == ["resnet18-random"]
    assert "Inception-v3 FID/KID skipped" in caplog.text


@pytest.mark.slow
def test_inception_loads_a_local_weights_file(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    from torchmetrics.image.fid import NoTrainInceptionV3

    # A stand-in for pt_inception-2015-12-05-6726825d.pth: same keys, random values.
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as m:
        m.setattr(NoTrainInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        donor = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(empty))
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(donor.state_dict(), weights)
    monkeypatch.setenv("THYROAUG_WEIGHTS_DIR", str(tmp_path))
    ext = InceptionFeatures(device="cpu")
    feats = ext(torch.rand(2, 1, 32, 32))
    assert ext.name == "inception" and feats.shape == (2, 2048) and np.isfinite(feats).all()
    assert [e.name for e in default_extractors()] == ["inception", "resnet18-random"]


def test_fidelity_metrics_names_counts_and_identity(tiny_cohort):
    images, labels = tiny_cohort.images, tiny_cohort.labels
    ext = ResNet18Features()
    drawn = fidelity_metrics(
        images, labels, images, labels, [ext], per_class=5, kid_subsets_count=5
    )
    for group in (*CLASSES, "overall"):
        for kind in ("fid", "kid", "kid_std"):
            assert f"{kind}_resnet18-random_{group}" in drawn
    assert drawn["n_real_DG"] == 5 and drawn["n_fake_DG"] == 5
    assert drawn["fid_resnet18-random_overall"] > 0  # independent draws of 5 from 27 per class
    whole = fidelity_metrics(images, labels, images, labels, [ext], kid_subsets_count=5)
    assert whole["n_real_DG"] == 27  # fewer than 200: all of them
    assert whole["fid_resnet18-random_overall"] == pytest.approx(0.0, abs=1e-6)
    assert whole["fid_resnet18-random_TI"] == pytest.approx(0.0, abs=1e-6)
    dimmer = fidelity_metrics(images, labels, images * 0.3, labels, [ext], kid_subsets_count=5)
    assert dimmer["fid_resnet18-random_overall"] > 1e-3
    assert dimmer["kid_resnet18-random_overall"] > whole["kid_resnet18-random_overall"]
    few = fidelity_metrics(images, labels, images[:4], labels[:4], [ext], per_class=200)
    assert "fid_resnet18-random_DG" in few and "fid_resnet18-random_NG" not in few


def test_fidelity_metrics_logs_sizes_dimension_intervals_and_prdc(tiny_cohort):
    images, labels = tiny_cohort.images, tiny_cohort.labels
    got = fidelity_metrics(
        images, labels, images * 0.8, labels, [ResNet18Features()], per_class=10, resamples=20
    )
    assert got["feature_dim_resnet18-random"] == 512
    assert got["n_real_overall"] == 40 and got["n_fake_overall"] == 40
    for group in (*CLASSES, "overall"):
        values = {q: got[metric_key(q, "resnet18-random", group)] for q in QUANTITIES}
        assert values["fid_low"] <= values["fid"] <= values["fid_high"]
        assert values["kid_low"] <= values["kid"] <= values["kid_high"]
        assert 0 <= values["precision"] <= 1 and 0 <= values["coverage"] <= 1
        assert values["n_below_dim"] == 1.0  # 10 or 40 images, 512 features
    again = fidelity_metrics(
        images, labels, images * 0.8, labels, [ResNet18Features()], per_class=10, resamples=20
    )
    assert again == got  # seeded: the same digits


# ------------------------------------------------------------------------- FID by SVD, bootstrap
def _sqrtm_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula: ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) (Heusel et al.)."""
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root.real))


@pytest.mark.parametrize(("n_real", "n_fake", "dim"), [(300, 250, 16), (40, 30, 64)])
def test_fid_by_svd_equals_the_sqrtm_formula(n_real, n_fake, dim):
    real, fake = (x.numpy() for x in features(n_real, n_fake, dim))
    rtol = 1e-9 if min(n_real, n_fake) > dim else 1e-5  # rank-deficient: sqrtm's own noise
    assert frechet_distance(real, fake) == pytest.approx(_sqrtm_fid(real, fake), rel=rtol)


def _u_statistic_without_copies(x, rows, kernel):
    """Unbiased within-set kernel mean over resampled positions of two distinct original rows."""
    k = kernel(x[rows], x[rows])
    distinct = rows[:, None] != rows[None, :]
    return k[distinct].mean()


def test_bootstrap_replicates_are_the_formulas_on_resampled_rows():
    real, fake = (x.numpy() for x in features(30, 25, 40))
    fids, kids = bootstrap_fid_kid(real, fake, resamples=3, seed=7)
    rng = np.random.default_rng(7)
    kernel = lambda x, y: (x @ y.T / x.shape[1] + 1) ** 3  # noqa: E731 - KID's kernel
    for t in range(3):
        i, j = rng.integers(0, 30, 30), rng.integers(0, 25, 25)
        assert fids[t] == pytest.approx(frechet_distance(real[i], fake[j]), rel=1e-9)
        within = _u_statistic_without_copies(real, i, kernel)
        within += _u_statistic_without_copies(fake, j, kernel)
        assert kids[t] == pytest.approx(within - 2 * kernel(real[i], fake[j]).mean(), rel=1e-9)


@pytest.mark.parametrize(("n", "dim"), [(60, 8), (25, 64)])
def test_bootstrap_intervals_contain_the_estimate_and_repeat_with_the_seed(n, dim):
    real, fake = (x.numpy() for x in features(n, n + 5, dim))
    one = group_fidelity(real, fake, seed=3, resamples=50, kid_subsets_count=10)
    assert one["fid_low"] < one["fid"] < one["fid_high"]
    assert one["kid_low"] < one["kid"] < one["kid_high"]
    assert group_fidelity(real, fake, seed=3, resamples=50, kid_subsets_count=10) == one
    other = group_fidelity(real, fake, seed=4, resamples=50, kid_subsets_count=10)
    assert other["fid"] == one["fid"] and other["fid_low"] != one["fid_low"]
    assert one["n_below_dim"] == float(n < dim)
    none = group_fidelity(real, fake, resamples=0, kid_subsets_count=10)
    assert np.isnan(none["fid_low"]) and none["fid"] == one["fid"]


def test_recentred_interval_shifts_the_percentiles_by_the_bootstrap_bias():
    replicates = np.arange(1001, dtype=np.float64) + 100.0  # mean 600, 2.5 % / 97.5 %: 125 / 1075
    low, high = recentred_interval(500.0, replicates, 0.95)
    assert (low, high) == pytest.approx((25.0, 975.0))
    assert np.isnan(recentred_interval(1.0, np.array([np.nan, 2.0]))[0])


@pytest.mark.parametrize(("n_real", "n_fake", "dim"), [(50, 40, 8), (30, 60, 128)])
def test_prdc_equals_the_authors_package(n_real, n_fake, dim):
    real, fake = (x.numpy() for x in features(n_real, n_fake, dim))
    ours = prdc(real, fake, nearest_k=5)
    reference = compute_prdc(real, fake, nearest_k=5)
    assert ours == pytest.approx({k: float(v) for k, v in reference.items()}, abs=1e-12)
    same = prdc(real, real, nearest_k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    with pytest.raises(ConfigError, match="nearest_k"):
        prdc(real[:5], fake, nearest_k=5)
