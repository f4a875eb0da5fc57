"""Memorisation audit of a synthetic set: is a generated image a near-copy of a training image?

For every generated image, its nearest training image (same class, and any class) in pixel space
(L2 on the [0, 1] images at the set's resolution) and in a feature space, compared with the same
nearest-training distances of the cohort's external images: real patients the generator never saw
(generated-to-train against held-out-to-train distances, as Meehan et al. 2020). A generated image
closer to a training image than the external images' ``QUANTILE`` (1 %) order statistic is a
near-copy: a new patient lands there with probability ``expected_fraction`` (about 1 %). A set
whose any-class near-copy fraction exceeds ``FLAG_MULTIPLE`` (5) times that rate in either space
is flagged. The rule, the reference and why: ``docs/memorisation.md``.

Numpy, pandas and a matplotlib figure; no torch (the job extracts the features).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from thyroaug.contract import CLASSES

SPACES: tuple[str, ...] = ("pixel", "feature")
NEIGHBOURS: tuple[str, ...] = ("same", "any")
"""Nearest training image of the same class / of any class."""
GROUPS: tuple[str, ...] = (*CLASSES, "overall")
QUANTILE = 0.01
"""A near-copy is closer to a training image than this quantile of the external distances."""
FLAG_MULTIPLE = 5.0
"""A set is flagged when its any-class near-copy fraction exceeds this multiple of the fraction
expected of new patients (``expected_fraction``)."""
PREFIX = "memorisation"


def audit_key(space: str, neighbour: str, quantity: str, group: str | None = None) -> str:
    """Metric name ``memorisation_<space>_<neighbour>_<quantity>[_<group>]``.

    Quantities: ``near_copy_frac``, ``median_ratio`` (median nearest distance, generated over
    external), ``min`` (smallest nearest distance) per group; ``threshold`` (the external
    distances' ``QUANTILE``) and ``reference_median`` per set.
    """
    name = f"{PREFIX}_{space}_{neighbour}_{quantity}"
    return f"{name}_{group}" if group else name


FLAGGED_KEY = f"{PREFIX}_flagged"
"""Metric: 1 when the set has near-copies by the rule above, else 0."""
EXPECTED_KEY = f"{PREFIX}_expected_frac"
"""Metric: the near-copy fraction expected of new patients (``expected_fraction``)."""
LIMIT_KEY = f"{PREFIX}_flag_limit"
"""Metric: the near-copy fraction above which the set is flagged."""


def threshold_rank(n_reference: int, quantile: float = QUANTILE) -> int:
    """Rank k (1-based) of the reference distance used as the near-copy threshold: the
    ``quantile`` order statistic, ``max(1, floor(quantile (n + 1)))``."""
    return max(1, math.floor(quantile * (n_reference + 1)))


def expected_fraction(n_reference: int, quantile: float = QUANTILE) -> float:
    """Probability that a new image exchangeable with the reference falls below the k-th
    smallest of ``n_reference`` reference distances: k / (n + 1) (about ``quantile``; more for a
    reference under 1 / quantile images)."""
    return threshold_rank(n_reference, quantile) / (n_reference + 1)


@dataclass
class Nearest:
    """Nearest training row of each query: its distance and its row index."""

    distance: np.ndarray
    index: np.ndarray


@dataclass
class MemorisationAudit:
    """What the audit found: metrics (names of ``audit_key``), the flag, the closest pairs
    (``closest_pairs`` columns; training case ids: patient data, for run artifacts only) and a
    one-sentence summary without case ids (for descriptions and the registry)."""

    metrics: dict[str, float]
    flagged: bool
    pairs: pd.DataFrame
    summary: str


def pairwise_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[len(x), len(y)]`` between rows (float64)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return np.sqrt(np.clip(sq, 0, None))


def nearest_training(
    queries: np.ndarray,
    query_labels: np.ndarray,
    train: np.ndarray,
    train_labels: np.ndarray,
    *,
    chunk: int = 256,
) -> dict[str, Nearest]:
    """Each query's nearest training row of the same class (``same``) and of any class
    (``any``); rows are flattened. A class without training rows gets distance inf, index -1."""
    q, t = _flat(queries), _flat(train)
    centre = t.mean(0)  # one shift of both sides: same distances, fewer rounding losses
    q, t = q - centre, t - centre
    ql, tl = np.asarray(query_labels), np.asarray(train_labels)
    out = {n: Nearest(np.empty(len(q)), np.empty(len(q), dtype=np.int64)) for n in NEIGHBOURS}
    for start in range(0, len(q), chunk):
        rows = slice(start, start + chunk)
        d = pairwise_distances(q[rows], t)
        out["any"].index[rows] = d.argmin(1)
        same = np.where(ql[rows, None] == tl[None, :], d, np.inf)
        out["same"].index[rows] = np.where(np.isfinite(same).any(1), same.argmin(1), -1)
        for name in NEIGHBOURS:
            idx = out[name].index[rows]
            out[name].distance[rows] = np.where(
                idx >= 0, d[np.arange(len(idx)), np.maximum(idx, 0)], np.inf
            )
    return out


def _flat(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def _space_metrics(
    space: str,
    generated: dict[str, Nearest],
    generated_labels: np.ndarray,
    reference: dict[str, Nearest],
    reference_labels: np.ndarray,
    quantile: float,
) -> dict[str, float]:
    """Threshold, near-copy fraction, median ratio and minimum, per neighbour kind and group."""
    out: dict[str, float] = {}
    for nb in NEIGHBOURS:
        g, r = generated[nb].distance, reference[nb].distance
        r_finite = np.sort(r[np.isfinite(r)])
        rank = threshold_rank(len(r_finite), quantile)
        threshold = float(r_finite[rank - 1]) if len(r_finite) else math.nan
        out[audit_key(space, nb, "threshold")] = threshold
        out[audit_key(space, nb, "reference_median")] = float(np.median(r_finite))
        for k, group in enumerate(GROUPS):
            gd = g[generated_labels == k] if group != "overall" else g
            rd = r[reference_labels == k] if group != "overall" else r
            gd, rd = gd[np.isfinite(gd)], rd[np.isfinite(rd)]
            if not len(gd):
                continue
            ratio = float(np.median(gd) / np.median(rd)) if len(rd) else math.nan
            out[audit_key(space, nb, "near_copy_frac", group)] = float((gd < threshold).mean())
            out[audit_key(space, nb, "median_ratio", group)] = ratio
            out[audit_key(space, nb, "min", group)] = float(gd.min())
    return out


def audit_memorisation(
    generated: np.ndarray,
    generated_labels: np.ndarray,
    train: np.ndarray,
    train_labels: np.ndarray,
    train_ids: Sequence[str],
    reference: np.ndarray,
    reference_labels: np.ndarray,
    *,
    features: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    feature_name: str = "features",
    quantile: float = QUANTILE,
    flag_multiple: float = FLAG_MULTIPLE,
    k_pairs: int = 16,
) -> MemorisationAudit:
    """Audit one synthetic set against the training images, with the external images as the
    reference (module docstring; ``docs/memorisation.md``).

    Args:
        generated: generated images ``[N, ...]`` in [0, 1], at the resolution compared.
        generated_labels: ``[N]`` class indices.
        train: the generator's training images ``[M, ...]``, same resolution.
        train_labels: ``[M]`` class indices.
        train_ids: ``[M]`` case ids (they reach only ``pairs``).
        reference: held-out images ``[R, ...]`` (the cohort's external split), same resolution.
        reference_labels: ``[R]`` class indices.
        features: (generated, train, reference) feature rows for the feature space; None: pixel
            space only.
        feature_name: the feature extractor's name, for the summary.
        quantile: reference quantile below which a generated image is a near-copy.
        flag_multiple: the set is flagged when its any-class near-copy fraction in a space
            exceeds this multiple of ``expected_fraction``.
        k_pairs: closest pairs kept per space.

    Raises:
        ValueError: an empty generated, training or reference set.
    """
    if min(len(generated), len(train), len(reference)) == 0:
        raise ValueError(
            f"memorisation audit: {len(generated)} generated, {len(train)} training and "
            f"{len(reference)} reference images; each needs at least one"
        )
    gl, tl, rl = (np.asarray(x) for x in (generated_labels, train_labels, reference_labels))
    spaces = {"pixel": (_flat(generated), _flat(train), _flat(reference))}
    if features is not None:
        spaces["feature"] = tuple(_flat(f) for f in features)  # type: ignore[assignment]
    metrics = {
        f"{PREFIX}_n_generated": float(len(gl)),
        f"{PREFIX}_n_train": float(len(tl)),
        f"{PREFIX}_n_reference": float(len(rl)),
    }
    nearest = {}
    for space, (g, t, r) in spaces.items():
        nearest[space] = nearest_training(g, gl, t, tl)
        near_ref = nearest_training(r, rl, t, tl)
        metrics.update(_space_metrics(space, nearest[space], gl, near_ref, rl, quantile))
    metrics[EXPECTED_KEY] = expected_fraction(len(rl), quantile)
    metrics[LIMIT_KEY] = flag_multiple * metrics[EXPECTED_KEY]
    fractions = {s: metrics[audit_key(s, "any", "near_copy_frac", "overall")] for s in spaces}
    flagged = any(f > metrics[LIMIT_KEY] for f in fractions.values())
    metrics[FLAGGED_KEY] = float(flagged)
    pairs = closest_pairs(nearest, spaces, metrics, gl, tl, list(train_ids), k_pairs)
    summary = audit_sentence(metrics, feature_name)
    return MemorisationAudit(metrics, flagged, pairs, summary)


def closest_pairs(
    nearest: Mapping[str, dict[str, Nearest]],
    spaces: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    metrics: Mapping[str, float],
    generated_labels: np.ndarray,
    train_labels: np.ndarray,
    train_ids: Sequence[str],
    k: int,
) -> pd.DataFrame:
    """The ``k`` generated images closest to a training image (any class) in each space.

    Columns: ranked_by (space), rank, generated_index, generated_label, train_index,
    train_case_id, train_label, pixel_distance and feature_distance of that pair (NaN without
    features), ratio (distance over the near-copy threshold of the ranked space), near_copy.
    """
    rows = []
    for space, near in nearest.items():
        order = np.argsort(near["any"].distance, kind="stable")[:k]
        threshold = metrics[audit_key(space, "any", "threshold")]
        for rank, gi in enumerate(order, start=1):
            ti = int(near["any"].index[gi])
            dist = {s: float(np.linalg.norm(spaces[s][0][gi] - spaces[s][1][ti])) for s in spaces}
            rows.append(
                {
                    "ranked_by": space,
                    "rank": rank,
                    "generated_index": int(gi),
                    "generated_label": CLASSES[int(generated_labels[gi])],
                    "train_index": ti,
                    "train_case_id": str(train_ids[ti]),
                    "train_label": CLASSES[int(train_labels[ti])],
                    "pixel_distance": dist["pixel"],
                    "feature_distance": dist.get("feature", math.nan),
                    "ratio": dist[space] / threshold if threshold > 0 else math.nan,
                    "near_copy": bool(dist[space] < threshold),
                }
            )
    return pd.DataFrame(rows)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f} %"


def audit_sentence(metrics: Mapping[str, float], feature_name: str = "features") -> str:
    """One sentence on an audit's metrics (no case ids): verdict, near-copy fractions against the
    rate expected of new patients, median distance ratios."""
    spaces = [s for s in SPACES if audit_key(s, "any", "near_copy_frac", "overall") in metrics]
    parts, ratios = [], []
    for space in spaces:
        frac = metrics[audit_key(space, "any", "near_copy_frac", "overall")]
        ratio = metrics.get(audit_key(space, "any", "median_ratio", "overall"), math.nan)
        where = "pixel space" if space == "pixel" else f"feature space, {feature_name}"
        parts.append(f"{_percent(frac)} ({where})")
        ratios.append(f"{ratio:.2f} ({space})")
    verdict = "near-copies" if metrics.get(FLAGGED_KEY) else "passed"
    n_gen = int(metrics.get(f"{PREFIX}_n_generated", 0))
    n_ref = int(metrics.get(f"{PREFIX}_n_reference", 0))
    return (
        f"memorisation audit: {verdict} - {' and '.join(parts)} of {n_gen} generated images are "
        f"closer to a training image than the {_ordinal(threshold_rank(n_ref))}closest of "
        f"{n_ref} external images (new patients: "
        f"{_percent(metrics.get(EXPECTED_KEY, math.nan))}; flag above "
        f"{_percent(metrics.get(LIMIT_KEY, math.nan))}); median nearest-distance ratio "
        f"generated / external {', '.join(ratios)}."
    )


def _ordinal(k: int) -> str:
    """'' for 1 ("the closest"), else "4th " ("the 4th closest")."""
    if k == 1:
        return ""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix} "


def closest_pairs_figure(
    pairs: pd.DataFrame,
    generated: np.ndarray,
    train: np.ndarray,
    per_space: int = 6,
) -> Figure:
    """The closest pairs side by side (generated | nearest training image), a column pair per
    ranked space, each titled with the pair's pixel and feature distances and its ratio to the
    near-copy threshold. ``generated`` / ``train``: ``[N, S, S]`` (or ``[N, 1, S, S]``) images."""
    gen = np.asarray(generated).reshape(len(generated), *np.shape(generated)[-2:])
    tr = np.asarray(train).reshape(len(train), *np.shape(train)[-2:])
    spaces = list(dict.fromkeys(pairs["ranked_by"])) or ["pixel"]
    rows = max(1, min(per_space, int(pairs.groupby("ranked_by").size().max())))
    fig = Figure(figsize=(3.2 * len(spaces), 1.7 * rows + 0.4))
    axes = fig.subplots(rows, 2 * len(spaces), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for c, space in enumerate(spaces):
        part = pairs[pairs["ranked_by"] == space].head(rows)
        for r, pair in enumerate(part.itertuples()):
            flag = " near-copy" if pair.near_copy else ""
            left, right = axes[r, 2 * c], axes[r, 2 * c + 1]
            left.imshow(gen[pair.generated_index], cmap="gray", vmin=0, vmax=1)
            head = f"closest in {space} space\n" if r == 0 else ""
            left.set_title(f"{head}gen {pair.generated_index} ({pair.generated_label})", fontsize=6)
            right.imshow(tr[pair.train_index], cmap="gray", vmin=0, vmax=1)
            right.set_title(
                f"train ({pair.train_label}) px {pair.pixel_distance:.2f} ft "
                f"{pair.feature_distance:.2f}\nx{pair.ratio:.2f} of threshold{flag}",
                fontsize=6,
            )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Reading audits back from synthesize runs' metrics
# --------------------------------------------------------------------------------------------
SUMMARY_COLUMNS: tuple[str, ...] = (
    "method",
    "space",
    "neighbour",
    "near_copy_frac",
    "median_ratio",
    "min",
    "threshold",
    "flagged",
)


def audit_summary(synth: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Overall audit metrics of synthesize runs ({method: run metrics}): one row per method,
    space and neighbour kind (``SUMMARY_COLUMNS``); runs without an audit are left out."""
    rows = []
    for method, values in synth.items():
        if FLAGGED_KEY not in values:
            continue
        for space in SPACES:
            for nb in NEIGHBOURS:
                key = audit_key(space, nb, "near_copy_frac", "overall")
                if key not in values:
                    continue
                rows.append(
                    {
                        "method": method,
                        "space": space,
                        "neighbour": nb,
                        "near_copy_frac": float(values[key]),
                        "median_ratio": float(
                            values.get(audit_key(space, nb, "median_ratio", "overall"), math.nan)
                        ),
                        "min": float(values.get(audit_key(space, nb, "min", "overall"), math.nan)),
                        "threshold": float(values.get(audit_key(space, nb, "threshold"), math.nan)),
                        "flagged": bool(values[FLAGGED_KEY]),
                    }
                )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def audit_notes(synth: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Plain sentences: each flagged set's audit, the sets that passed, the sets not audited."""
    flagged = [m for m, v in synth.items() if v.get(FLAGGED_KEY) == 1]
    passed = [m for m, v in synth.items() if v.get(FLAGGED_KEY) == 0]
    missing = [m for m, v in synth.items() if FLAGGED_KEY not in v]
    notes = [f"{m}: {audit_sentence(synth[m])}" for m in flagged]
    if passed:
        notes.append(
            f"Memorisation audit passed (near-copies of training images within {FLAG_MULTIPLE:g} "
            f"times the rate of new patients, pixel and feature space): {', '.join(passed)}."
        )
    if missing:
        notes.append(f"No memorisation audit for {', '.join(missing)} (run logged without one).")
    return notes
