"""Fidelity of synthetic images: feature extractors and distribution distances, kept apart.

As MONAI's ``FIDMetric`` / ``MMDMetric``, "extract features" and "compare two feature sets" are
separate and testable alone:

* **Distances** on feature matrices ``[N, D]``: ``frechet_distance`` (FID: the Fréchet distance
  of the two feature Gaussians, ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), unbiased
  covariances S = C^T C with C the centred features / sqrt(N - 1); tr((S1 S2)^1/2) is computed as
  the sum of singular values of Ca Cb^T (N x M, when that is smaller) or of S1^1/2 S2^1/2 (D x D,
  eigen-based roots), which equals the usual sqrtm / eigenvalue form but stays accurate when the
  covariances are rank-deficient, as they are for 200 images and 512+ features) and
  ``kernel_inception_distance`` (KID: the unbiased MMD^2 with the polynomial kernel
  (x.y / D + 1)^3, averaged over random subsets, with its population std). Both equal
  torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` on the same features:
  KID draws its subsets exactly as torchmetrics does (per subset ``randperm`` of the real, then
  of the fake set) from a generator seeded ``seed``, so ``torch.manual_seed(seed)`` before
  torchmetrics' ``compute`` reproduces it (tests/test_fidelity.py).
* **Extractors** map images ``[N, 1, S, S]`` in the cohort's [0, 1] range to features:
  ``InceptionFeatures`` (the standard FID Inception-v3, torch-fidelity's
  ``pt_inception-2015-12-05-6726825d.pth`` through torchmetrics, 2048-d pool features; only when
  that file is present locally, ``THYROAUG_INCEPTION_WEIGHTS`` or ``$THYROAUG_WEIGHTS_DIR``, and
  torch-fidelity is installed: never downloaded) and ``ResNet18Features``, the 512-d global
  average pool of a ResNet18 classifier (a module or an MLflow model URI; the paper's classifier
  trained on scenario O gives the domain extractor ``resnet18-O``). Without a trained one it falls
  back to a fixed-seed (0) randomly initialised torchvision ResNet18 named ``resnet18-random``:
  random conv features still separate image statistics, but the numbers are only comparable
  between runs that use the same fallback.
* **Intervals and coverage measures** on the same features: ``bootstrap_fid_kid`` (real and fake
  rows resampled with replacement; each replicate's FID from precomputed Gram matrices) with
  ``recentred_interval``, and ``prdc`` (precision / recall, Kynkaanniemi et al. 2019; density /
  coverage, Naeem et al. 2020). Definitions and derivations: ``docs/fidelity.md``.
* ``fidelity_metrics`` draws ``per_class`` (paper: 200) real and synthetic images per class at
  random (seeded), and reports class-wise and overall (the union of the class draws) values under
  the names of ``thyroaug.evaluation.table3`` (``fid_<extractor>_<CLASS|overall>``,
  ``kid_<extractor>_<...>``, ``kid_std_<extractor>_<...>``, their intervals, P/R/D/C, sample sizes
  and the feature dimension).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from thyroaug.config import local_weights
from thyroaug.contract import CLASSES
from thyroaug.errors import ConfigError
from thyroaug.evaluation.memorisation import pairwise_distances
from thyroaug.evaluation.table3 import count_key, dim_key, metric_key
from thyroaug.utils.resize import resize_images

log = logging.getLogger(__name__)

RESAMPLES = 200
"""Bootstrap replicates of the FID / KID intervals."""
CI_LEVEL = 0.95
NEAREST_K = 5
"""k of precision / recall / density / coverage (Naeem et al. 2020's recommendation)."""

INCEPTION_ENV = "THYROAUG_INCEPTION_WEIGHTS"
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------
def _features(x: Any, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ConfigError(f"{name}: need a feature matrix [N >= 2, D], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name}: features contain NaN or inf")
    return arr


def frechet_distance(real: Any, fake: Any) -> float:
    """FID between two feature sets ``[N, D]`` (float64; see the module docstring).

    Raises:
        ConfigError: fewer than two rows, different feature sizes, or non-finite values.
    """
    a, b = _features(real, "real"), _features(fake, "fake")
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    mu1, mu2 = a.mean(0), b.mean(0)
    ca, cb = (a - mu1) / np.sqrt(len(a) - 1), (b - mu2) / np.sqrt(len(b) - 1)
    # tr((S1 S2)^1/2) = nuclear norm of S1^1/2 S2^1/2 = nuclear norm of Ca Cb^T (S = C^T C):
    # singular values carry no square-root-amplified rounding noise from the null space.
    if len(a) * len(b) <= a.shape[1] ** 2:
        trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    else:
        trace_sqrt = np.linalg.svd(
            _psd_sqrt(ca.T @ ca) @ _psd_sqrt(cb.T @ cb), compute_uv=False
        ).sum()
    trace_a, trace_b = (ca * ca).sum(), (cb * cb).sum()
    return float(((mu1 - mu2) ** 2).sum() + trace_a + trace_b - 2 * trace_sqrt)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _poly_mmd(a: np.ndarray, b: np.ndarray, degree: int, gamma: float | None, coef: float) -> float:
    g = 1.0 / a.shape[1] if gamma is None else gamma
    k_aa = (a @ a.T * g + coef) ** degree
    k_bb = (b @ b.T * g + coef) ** degree
    k_ab = (a @ b.T * g + coef) ** degree
    m = a.shape[0]
    within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within - 2 * k_ab.sum() / m**2)


def kid_subsets(n_real: int, n_fake: int, subsets: int, subset_size: int, seed: int) -> list:
    """The (real rows, fake rows) index pairs KID averages over (torchmetrics' draw order)."""
    gen = torch.Generator().manual_seed(int(seed))
    pairs = []
    for _ in range(subsets):
        r = torch.randperm(n_real, generator=gen)[:subset_size].numpy()
        f = torch.randperm(n_fake, generator=gen)[:subset_size].numpy()
        pairs.append((r, f))
    return pairs


def kernel_inception_distance(
    real: Any,
    fake: Any,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (mean, std over subsets) between two feature sets ``[N, D]``.

    ``subset_size`` is reduced to the smaller set's size when larger (200 per class in the paper's
    protocol), where torchmetrics would refuse.
    """
    a, b = _features(real, "real"), _features(fake, "fake")
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(int(subset_size), len(a), len(b))
    values = [
        _poly_mmd(a[r], b[f], degree, gamma, coef)
        for r, f in kid_subsets(len(a), len(b), int(subsets), m, seed)
    ]
    return float(np.mean(values)), float(np.std(values))


# --------------------------------------------------------------------------------------------
# Bootstrap intervals (docs/fidelity.md, "Intervals")
# --------------------------------------------------------------------------------------------
class _FidGrams:
    """Inner products of both feature sets, from which the FID of any resample follows in
    O(n_real n_fake) plus one SVD (docs/fidelity.md: the weighted form of ``frechet_distance``)."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        centre = a.mean(0)  # one shift of both sets leaves FID unchanged and the Grams accurate
        a, b = a - centre, b - centre
        self.ab, self.aa, self.bb = a @ b.T, a @ a.T, b @ b.T

    def fid(self, w: np.ndarray, v: np.ndarray) -> float:
        """FID of the resample that takes real row i ``w[i]`` times and fake row j ``v[j]``."""
        iw, iv = np.flatnonzero(w), np.flatnonzero(v)
        wi, vi = w[iw], v[iv]
        n1, n2 = wi.sum(), vi.sum()
        ab = self.ab[np.ix_(iw, iv)]
        aa, bb = self.aa[np.ix_(iw, iw)], self.bb[np.ix_(iv, iv)]
        a_q, p_b = ab @ vi / n2, wi @ ab / n1  # a_i . mean_fake, mean_real . b_j
        pq, pp, qq = wi @ a_q / n1, wi @ aa @ wi / n1**2, vi @ bb @ vi / n2**2
        cross = (ab - a_q[:, None] - p_b[None, :] + pq) * np.sqrt(np.outer(wi, vi))
        trace_sqrt = np.linalg.svd(cross, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
        trace_a = (wi @ np.diag(aa) - n1 * pp) / (n1 - 1)
        trace_b = (vi @ np.diag(bb) - n2 * qq) / (n2 - 1)
        return float(pp + qq - 2 * pq + trace_a + trace_b - 2 * trace_sqrt)


class _KidKernels:
    """Polynomial-kernel matrices of both sets (KID's kernel, Binkowski et al. 2018)."""

    def __init__(self, a: np.ndarray, b: np.ndarray, degree: int, gamma: float | None, coef: float):
        g = 1.0 / a.shape[1] if gamma is None else gamma
        self.aa = (a @ a.T * g + coef) ** degree
        self.bb = (b @ b.T * g + coef) ** degree
        self.ab = (a @ b.T * g + coef) ** degree

    @staticmethod
    def _within(k: np.ndarray, w: np.ndarray) -> float:
        pairs = w.sum() ** 2 - (w * w).sum()  # ordered pairs of copies of two distinct rows
        return (w @ k @ w - (w * w) @ np.diag(k)) / pairs if pairs > 0 else math.nan

    def kid(self, w: np.ndarray, v: np.ndarray) -> float:
        """Unbiased MMD^2 of a resample, pairs of copies of one row left out (as i != j)."""
        cross = w @ self.ab @ v / (w.sum() * v.sum())
        return float(self._within(self.aa, w) + self._within(self.bb, v) - 2 * cross)


def bootstrap_fid_kid(
    real: Any,
    fake: Any,
    *,
    resamples: int = 200,
    seed: int | Sequence[int] = 0,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """FID and KID of ``resamples`` bootstrap replicates (Efron & Tibshirani 1993).

    Replicate t resamples the real rows, then the fake rows, with replacement
    (``rng.integers(0, n, n)`` each, ``rng = np.random.default_rng(seed)``). Its FID equals
    ``frechet_distance`` of the resampled matrices; its KID is the full unbiased MMD^2 (the value
    KID's subset average estimates) with pairs of copies of one row left out.

    Returns:
        (FID replicates, KID replicates), each ``[resamples]``.
    """
    a, b = _features(real, "real"), _features(fake, "fake")
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    grams, kernels = _FidGrams(a, b), _KidKernels(a, b, degree, gamma, coef)
    rng = np.random.default_rng(seed)
    fids, kids = np.empty(int(resamples)), np.empty(int(resamples))
    # one BLAS thread: the matrices are a few hundred rows, where threads only wait on each other
    # (tenfold slower on shared cores)
    with threadpool_limits(limits=1):
        for t in range(int(resamples)):
            w = np.bincount(rng.integers(0, len(a), len(a)), minlength=len(a)).astype(np.float64)
            v = np.bincount(rng.integers(0, len(b), len(b)), minlength=len(b)).astype(np.float64)
            fids[t], kids[t] = grams.fid(w, v), kernels.kid(w, v)
    return fids, kids


def recentred_interval(
    estimate: float, replicates: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the replicates shifted by the bootstrap bias (their mean minus the
    estimate), so that it brackets the estimate (docs/fidelity.md: a resample holds ~63 % distinct
    rows, which raises FID's small-sample bias). NaN when fewer than two replicates are finite."""
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if len(reps) < 2:
        return math.nan, math.nan
    low, high = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    shift = reps.mean() - estimate
    return float(low - shift), float(high - shift)


# --------------------------------------------------------------------------------------------
# Precision, recall, density, coverage
# --------------------------------------------------------------------------------------------
def prdc(real: Any, fake: Any, *, nearest_k: int = 5) -> dict[str, float]:
    """Precision and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020)
    with k-nearest-neighbour balls in the feature space, as the authors' ``prdc`` package.

    Raises:
        ConfigError: ``nearest_k`` or fewer rows on a side, or different feature sizes.
    """
    a, b = _features(real, "real"), _features(fake, "fake")
    if a.shape[1] != b.shape[1] or min(len(a), len(b)) <= nearest_k:
        raise ConfigError(
            f"prdc: need more than nearest_k={nearest_k} rows of equal size on both sides, got "
            f"{a.shape} and {b.shape}"
        )
    centre = a.mean(0)
    a, b = a - centre, b - centre
    d_rr, d_ff, d_rf = pairwise_distances(a, a), pairwise_distances(b, b), pairwise_distances(a, b)
    np.fill_diagonal(d_rr, 0.0)
    np.fill_diagonal(d_ff, 0.0)
    radius_real = np.partition(d_rr, nearest_k, axis=1)[:, nearest_k]  # k-th neighbour, not self
    radius_fake = np.partition(d_ff, nearest_k, axis=1)[:, nearest_k]
    inside = d_rf < radius_real[:, None]  # fake j inside real i's ball
    return {
        "precision": float(inside.any(axis=0).mean()),
        "recall": float((d_rf < radius_fake[None, :]).any(axis=1).mean()),
        "density": float(inside.sum(axis=0).mean() / nearest_k),
        "coverage": float((d_rf.min(axis=1) < radius_real).mean()),
    }


# --------------------------------------------------------------------------------------------
# Extractors
# --------------------------------------------------------------------------------------------
@runtime_checkable
class FeatureExtractor(Protocol):
    """Images ``[N, 1, S, S]`` in [0, 1] -> features ``[N, D]`` (float64 numpy)."""

    name: str

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """Features of ``images``."""
        ...


def _batched(
    fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int
) -> np.ndarray:
    outs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            outs.append(fn(images[start : start + batch_size]).double().cpu())
    return torch.cat(outs).numpy()


def _first_tensor(out: Any) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _pool_output_graph(module: nn.Module) -> torch.fx.GraphModule:
    """A copy of an exported (``torch.export`` / MLflow pt2) model that returns its last global
    average pool instead of the logits."""
    import copy

    if not isinstance(module, torch.fx.GraphModule):
        raise ConfigError(f"{type(module).__name__} has no AdaptiveAvgPool2d layer to read")
    graph_module = copy.deepcopy(module)
    graph = graph_module.graph
    pools = [
        n for n in graph.nodes if n.op == "call_function" and "adaptive_avg_pool2d" in str(n.target)
    ]
    if not pools:
        raise ConfigError("the exported classifier has no adaptive_avg_pool2d node to read")
    output = next(n for n in graph.nodes if n.op == "output")
    results = [n for n in output.all_input_nodes]
    if not results:
        raise ConfigError("the exported classifier has no output to replace")
    output.replace_input_with(results[0], pools[-1])
    graph_module.recompile()
    return graph_module


def random_resnet18(seed: int = 0) -> nn.Module:
    """torchvision ResNet18 (4 outputs) randomly initialised under a fixed seed."""
    from torchvision.models import resnet18

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return resnet18(weights=None, num_classes=len(CLASSES))


class ResNet18Features:
    """512-d global-average-pool features of a ResNet18 classifier.

    Args:
        model: a ResNet18-like ``nn.Module`` (the classifier trained on scenario O), an MLflow
            model URI loadable with ``mlflow.pytorch.load_model``, or None for the fixed-seed
            random fallback ``resnet18-random``.
        name: extractor name in metric names (default ``resnet18-O`` for a given model).
        preprocess: maps [0, 1] images to the classifier's input (default: identity, gray images
            repeated to the first conv's input channels).
        device: where to run (CUDA if available when None).
        batch_size: images per forward pass.
        input_size: side length the model accepts; images of any other size are resized to it
            (``utils.resize.resize_images``) before the forward pass. Default: read from the
            logged model's input signature for an MLflow URI (an exported model takes only that
            size), None (any size) for a module.

    The features are read by a forward hook on the model's last ``AdaptiveAvgPool2d`` (torchvision's
    ``avgpool``), so any head (dropout + linear) is irrelevant. A model MLflow logged in its
    ``pt2`` (torch.export) format has no such module: its graph is cut at the last
    ``adaptive_avg_pool2d`` node instead (it then accepts only the image size it was logged with).
    """

    def __init__(
        self,
        model: nn.Module | str | None = None,
        *,
        name: str | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str | None = None,
        batch_size: int = 64,
        input_size: int | None = None,
    ) -> None:
        self.input_size = input_size
        if model is None:
            module, default_name = random_resnet18(0), "resnet18-random"
        elif isinstance(model, str):
            import mlflow

            try:
                module = mlflow.pytorch.load_model(model, map_location="cpu")
            except Exception as exc:
                raise ConfigError(
                    f"cannot load a PyTorch classifier from {model} ({exc}); pass the URI of a "
                    "model logged with mlflow.pytorch (the O-scenario ResNet18)"
                ) from exc
            default_name = "resnet18-O"
            self.input_size = input_size or _logged_input_size(model)
        else:
            module, default_name = model, "resnet18-O"
        self.name = name or default_name
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        module = module.to(self.device)
        pools = [m for m in module.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
        self._pool: nn.Module | None = pools[-1] if pools else None
        if self._pool is None:
            module = _pool_output_graph(module)  # an exported (pt2) model: cut its graph
        self.model = module.eval() if not isinstance(module, torch.fx.GraphModule) else module
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        weights = [p for n, p in module.named_parameters() if p.ndim == 4]
        self.in_channels = (
            convs[0].in_channels if convs else (int(weights[0].shape[1]) if weights else 1)
        )
        self.preprocess = preprocess
        self.batch_size = int(batch_size)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if self.input_size and x.shape[-1] != self.input_size:
            # an exported classifier takes only its logged size: every set is resized to it
            x = resize_images(x, self.input_size)
        x = self.preprocess(x) if self.preprocess else x.expand(-1, self.in_channels, -1, -1)
        try:
            if self._pool is None:
                return _first_tensor(self.model(x)).flatten(1)
            grabbed: list[torch.Tensor] = []
            handle = self._pool.register_forward_hook(lambda _m, _i, out: grabbed.append(out))
            try:
                self.model(x)
            finally:
                handle.remove()
            return grabbed[-1].flatten(1)
        except (RuntimeError, AssertionError) as exc:
            raise ConfigError(
                f"{self.name}: the classifier rejected {list(x.shape)} inputs ({exc}); an "
                "exported model accepts only its logged image size"
            ) from exc

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """Features ``[N, 512]``."""
        return _batched(self._forward, images, self.batch_size)


def _logged_input_size(uri: str) -> int | None:
    """Image side of an MLflow-logged classifier's input signature ``[-1, C, S, S]``, if any."""
    import mlflow

    try:
        spec = mlflow.models.get_model_info(uri).signature.inputs.inputs[0]
        shape = tuple(spec.shape)
    except Exception:  # no signature / not a tensor spec: the model takes any size
        return None
    return int(shape[-1]) if len(shape) == 4 and int(shape[-1]) > 0 else None


def inception_weights() -> Path | None:
    """The local FID Inception-v3 weights file, or None (never downloaded)."""
    return local_weights(INCEPTION_ENV, INCEPTION_FILE)


class InceptionFeatures:
    """Standard FID Inception-v3 2048-d pool features (torchmetrics / torch-fidelity weights).

    Images in [0, 1] are quantised to uint8 and repeated to RGB, then resized to 299 px inside
    the network, as torchmetrics' FID does for ``normalize=True`` inputs.

    Raises:
        ConfigError: no local weights file, or torch-fidelity is not installed.
    """

    name = "inception"

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        device: torch.device | str | None = None,
        batch_size: int = 32,
    ) -> None:
        path = Path(weights) if weights else inception_weights()
        if path is None or not path.exists():
            raise ConfigError(
                f"no Inception-v3 FID weights: set {INCEPTION_ENV} to {INCEPTION_FILE} (or put "
                "it in $THYROAUG_WEIGHTS_DIR); it is never downloaded"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as exc:  # pragma: no cover - torchmetrics is a dependency
            raise ConfigError(f"torchmetrics' Inception is unavailable: {exc}") from exc
        try:
            self.model = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048"],
                feature_extractor_weights_path=str(path),
            )
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"the Inception extractor needs torch-fidelity (pip install torch-fidelity): {exc}"
            ) from exc
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = self.model.to(self.device)
        self.batch_size = int(batch_size)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.device, torch.float32).clamp(0, 1) * 255).to(torch.uint8)
        return self.model(x.expand(-1, 3, -1, -1).contiguous())

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """Features ``[N, 2048]``."""
        return _batched(self._forward, images, self.batch_size)


def default_extractors(
    classifier: nn.Module | str | None = None,
    *,
    device: torch.device | str | None = None,
) -> list[FeatureExtractor]:
    """Inception-v3 (if its weights are present) and the ResNet18 domain extractor.

    Args:
        classifier: the O-scenario ResNet18 (module or MLflow URI); None -> ``resnet18-random``.
        device: where to run the extractors.
    """
    out: list[FeatureExtractor] = []
    try:
        out.append(InceptionFeatures(device=device))
    except ConfigError as exc:
        log.warning("Inception-v3 FID/KID skipped: %s", exc)
    if classifier is None:
        log.warning(
            "no O-scenario classifier given: ResNet18 features from a fixed-seed random "
            "initialisation (resnet18-random), comparable only with runs that use it too"
        )
    out.append(ResNet18Features(classifier, device=device))
    return out


# --------------------------------------------------------------------------------------------
# Protocol: class-wise and overall
# --------------------------------------------------------------------------------------------
def _draw(labels: np.ndarray, label: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.flatnonzero(labels == label)
    if len(rows) > per_class:
        rows = np.sort(rng.choice(rows, size=per_class, replace=False))
    return rows


def _draw_groups(
    real_labels: Any, fake_labels: Any, per_class: int, seed: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, float]]:
    """Per class: ``per_class`` real and fake rows drawn at random (seeded); their counts."""
    rl, fl = np.asarray(real_labels), np.asarray(fake_labels)
    draws: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    counts: dict[str, float] = {}
    for k, name in enumerate(CLASSES):
        rng = np.random.default_rng([int(seed), k])
        r, f = _draw(rl, k, per_class, rng), _draw(fl, k, per_class, rng)
        counts[count_key("real", name)], counts[count_key("fake", name)] = len(r), len(f)
        if len(r) < 2 or len(f) < 2:
            log.warning("class %s: %d real / %d synthetic images, skipped", name, len(r), len(f))
            continue
        if len(r) < per_class or len(f) < per_class:
            log.warning("class %s: only %d real / %d synthetic images", name, len(r), len(f))
        draws[name] = (r, f)
    if not draws:
        raise ConfigError("no class has two or more images in both sets: nothing to compare")
    counts[count_key("real", "overall")] = sum(len(r) for r, _ in draws.values())
    counts[count_key("fake", "overall")] = sum(len(f) for _, f in draws.values())
    return draws, {k: float(v) for k, v in counts.items()}


def fidelity_metrics(
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    fake_images: torch.Tensor,
    fake_labels: torch.Tensor,
    extractors: Sequence[FeatureExtractor],
    *,
    per_class: int = 200,
    seed: int = 0,
    kid_subsets_count: int = 100,
    kid_subset_size: int = 1000,
    resamples: int = RESAMPLES,
    level: float = CI_LEVEL,
    nearest_k: int = NEAREST_K,
) -> dict[str, float]:
    """Class-wise and overall fidelity for each extractor (paper section 3.3.1: 200 per class).

    Args:
        real_images: ``[N, 1, S, S]`` in [0, 1] (e.g. the cohort's train split).
        real_labels: ``[N]`` class indices.
        fake_images: synthetic images ``[M, 1, S', S']`` in [0, 1]; both sets are compared at
            ``min(S, S')`` (the larger one is downsampled, antialiased).
        fake_labels: ``[M]`` class indices.
        extractors: feature extractors (their ``name`` enters the metric names).
        per_class: images drawn per class from each set (all when fewer).
        seed: seed of the draws, of KID's subsets and of the bootstrap.
        kid_subsets_count: KID subsets.
        kid_subset_size: KID subset size (capped at the smaller set).
        resamples: bootstrap replicates of the FID / KID intervals (0: no intervals).
        level: interval coverage.
        nearest_k: k of precision / recall / density / coverage.

    Returns:
        ``{metric name: value}``, names from ``table3.metric_key`` / ``count_key`` / ``dim_key``
        (``n_real_<group>``, ``feature_dim_<ext>``, ``fid_<ext>_<group>`` and its
        ``_ci_low`` / ``_ci_high``, ``kid_``, ``kid_std_``, ``precision_`` ... ``coverage_``,
        ``n_below_dim_``); a class with fewer than two images in either set is skipped with a
        warning.
    """
    # Compare at the smaller of the two resolutions: downsampling (antialiased) loses nothing the
    # other set has, while upsampling would blur one side and inflate the distance.
    size = min(real_images.shape[-1], fake_images.shape[-1])
    real_images, fake_images = resize_images(real_images, size), resize_images(fake_images, size)
    draws, out = _draw_groups(real_labels, fake_labels, per_class, seed)
    all_r = np.concatenate([d[0] for d in draws.values()])
    all_f = np.concatenate([d[1] for d in draws.values()])
    pos_r = {row: i for i, row in enumerate(all_r)}
    pos_f = {row: i for i, row in enumerate(all_f)}
    groups = {n: ([pos_r[i] for i in r], [pos_f[i] for i in f]) for n, (r, f) in draws.items()}
    groups["overall"] = (list(range(len(all_r))), list(range(len(all_f))))
    options = {
        "kid_subsets_count": kid_subsets_count,
        "kid_subset_size": kid_subset_size,
        "resamples": resamples,
        "level": level,
        "nearest_k": nearest_k,
    }
    for ext in extractors:
        feats_r = ext(real_images[torch.as_tensor(all_r)])
        feats_f = ext(fake_images[torch.as_tensor(all_f)])
        out[dim_key(ext.name)] = float(feats_r.shape[1])
        for index, (group, (ir, jf)) in enumerate(groups.items()):
            values = group_fidelity(feats_r[ir], feats_f[jf], seed=seed, group=index, **options)
            out.update({metric_key(q, ext.name, group): v for q, v in values.items()})
    return out


def group_fidelity(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    seed: int = 0,
    group: int = 0,
    kid_subsets_count: int = 100,
    kid_subset_size: int = 1000,
    resamples: int = RESAMPLES,
    level: float = CI_LEVEL,
    nearest_k: int = NEAREST_K,
) -> dict[str, float]:
    """Every quantity of ``table3.QUANTITIES`` for one pair of feature sets.

    KID's subsets are seeded ``seed``, the bootstrap ``(seed, group)`` (independent per group).
    Without ``resamples`` the intervals are NaN; with ``nearest_k`` or fewer images on a side,
    precision / recall / density / coverage are NaN.
    """
    a, b = _features(real, "real"), _features(fake, "fake")
    with threadpool_limits(limits=1):  # small matrices: see bootstrap_fid_kid
        fid = frechet_distance(a, b)
        kid, kid_std = kernel_inception_distance(
            a, b, subsets=kid_subsets_count, subset_size=kid_subset_size, seed=seed
        )
    out = {"fid": fid, "kid": kid, "kid_std": kid_std}
    nan = (math.nan, math.nan)
    if resamples > 0:
        fids, kids = bootstrap_fid_kid(a, b, resamples=resamples, seed=(seed, group))
        fid_ci, kid_ci = recentred_interval(fid, fids, level), recentred_interval(kid, kids, level)
    else:
        fid_ci = kid_ci = nan
    out.update(fid_low=fid_ci[0], fid_high=fid_ci[1])
    out.update(kid_low=kid_ci[0], kid_high=kid_ci[1])
    if min(len(a), len(b)) > nearest_k:
        with threadpool_limits(limits=1):
            out.update(prdc(a, b, nearest_k=nearest_k))
    else:
        out.update(dict.fromkeys(("precision", "recall", "density", "coverage"), math.nan))
    out["n_below_dim"] = float(min(len(a), len(b)) < a.shape[1])
    return out


# --------------------------------------------------------------------------------------------
# Fidelity per generator mode (paper Table 3)
# --------------------------------------------------------------------------------------------
TABLE3_COLUMNS: tuple[str, ...] = ("mode", "extractor", "group", "fid", "kid", "kid_std")


def fidelity_by_mode(
    draw: Callable[[str], Any],
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    modes: Sequence[str],
    *,
    per_class: int = 200,
    seed: int = 0,
    extractors: Sequence[FeatureExtractor] | None = None,
) -> Any:
    """FID / KID of each generator mode against the real images, class-wise and overall (Table 3).

    Each mode's synthetic set comes from ``draw(mode)`` (anything with ``images`` and ``labels``,
    e.g. ``generators.base.synthesize(handle, per_class, seed, mode=mode)[0]``; the paper draws
    200 images per class) and is compared by ``fidelity_metrics`` (``per_class`` real and
    synthetic images per class, seeded by ``seed``).

    Args:
        draw: mode -> synthetic set of that mode.
        real_images: ``[N, 1, S, S]`` in [0, 1] (e.g. the cohort's train split).
        real_labels: ``[N]`` class indices.
        modes: the modes to evaluate, in order (``SD1``..``SD4``).
        per_class: images per class drawn from each set.
        seed: seed of the metric draws.
        extractors: feature extractors (default: ``default_extractors()``).

    Returns:
        Long DataFrame with columns mode, extractor, group (DG/NG/NL/TI/overall), fid, kid,
        kid_std; ``table3`` pivots it into the paper's layout.
    """
    import pandas as pd

    exts = list(extractors) if extractors is not None else default_extractors()
    rows = []
    for mode in modes:
        synth = draw(mode)
        metrics = fidelity_metrics(
            real_images,
            real_labels,
            synth.images,
            synth.labels,
            exts,
            per_class=per_class,
            seed=seed,
        )
        for ext in exts:
            for group in (*CLASSES, "overall"):
                key = f"{ext.name}_{group}"
                if f"fid_{key}" in metrics:
                    rows.append(
                        {
                            "mode": mode,
                            "extractor": ext.name,
                            "group": group,
                            "fid": metrics[f"fid_{key}"],
                            "kid": metrics[f"kid_{key}"],
                            "kid_std": metrics[f"kid_std_{key}"],
                        }
                    )
        log.info("fidelity of %s computed (%d images per class)", mode, per_class)
    return pd.DataFrame(rows, columns=list(TABLE3_COLUMNS))


def table3(long: Any, extractor: str | None = None) -> Any:
    """Pivot ``fidelity_by_mode`` output to the paper's layout: rows classes + overall,
    columns (mode, FID / KID), for one extractor (default: the first one)."""
    name = extractor or str(long["extractor"].iloc[0])
    part = long[long["extractor"] == name]
    wide = part.pivot(index="group", columns="mode", values=["fid", "kid"])
    wide = wide.swaplevel(0, 1, axis=1).sort_index(axis=1, level=0)
    wide = wide.rename(columns={"fid": "FID", "kid": "KID"}, level=1)
    order = [g for g in (*CLASSES, "overall") if g in wide.index]
    return wide.loc[order]
