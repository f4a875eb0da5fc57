"""DeLong's test of correlated ROC AUCs (DeLong et al. 1988; Sun & Xu 2014 midranks).

``delong_roc_test`` compares two scores on one binary task; ``delong_test`` does so for every
one-vs-rest class of two probability matrices and for the macro AUC, from the per-case
structural components of ``_structural_components``. Equations: ``docs/statistics.md``, "DeLong".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from thyroaug.evaluation.metrics import (
    MetricInputError,
    check_correct,
    check_level,
    check_pair,
    check_scores,
)


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of two correlated AUCs (one binary problem).

    Attributes:
        auc_a, auc_b: the two AUCs.
        diff: ``auc_b - auc_a``.
        var_a, var_b, cov_ab: DeLong (co)variances of the AUC estimates.
        se: standard error of ``diff`` (``sqrt(var_a + var_b - 2 cov_ab)``).
        z: ``diff / se`` (0 when diff and se are both 0).
        p_value: two-sided normal p-value.
        ci_low, ci_high: ``diff -/+ z_{(1+level)/2} * se``.
        n_pos, n_neg: numbers of positive and negative cases.
    """

    auc_a: float
    auc_b: float
    diff: float
    var_a: float
    var_b: float
    cov_ab: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int


def _structural_components(
    scores: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and per-case DeLong structural components of several scores on one binary task.

    Midrank algorithm of Sun & Xu (2014, IEEE Signal Process. Lett. 21:1389) for the placement
    values V10 / V01 of DeLong, DeLong & Clarke-Pearson (1988, Biometrics 44:837), returned per
    case as ``psi`` so that ``Cov(AUC_r, AUC_s) = sum_i psi_r(i) psi_s(i)`` and several binary
    tasks on the same cases combine (the macro AUC). Equations: ``docs/statistics.md``, "DeLong".

    Args:
        scores: float [r, N] scores of r models on the same N cases.
        positive: bool [N], at least one positive and one negative.

    Returns:
        (AUC [r], psi [N, r]); psi is NaN when m < 2 or n < 2 (variance not estimable).
    """
    pos, neg = scores[:, positive], scores[:, ~positive]
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    psi = np.full((scores.shape[1], scores.shape[0]), np.nan)
    if m >= 2 and n >= 2:
        psi[positive] = ((v10 - auc[:, None]) / math.sqrt(m * (m - 1))).T
        psi[~positive] = ((v01 - auc[:, None]) / math.sqrt(n * (n - 1))).T
    return auc, psi


def _z_test(diff: float, var: float, level: float) -> dict[str, float]:
    """z, two-sided normal p and Wald interval of ``diff`` with variance ``var``."""
    if not np.isfinite(var):
        return dict.fromkeys(("se", "z", "p_value", "ci_low", "ci_high"), math.nan)
    se = math.sqrt(max(var, 0.0))
    if se > 0:
        z = diff / se
    else:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    crit = float(norm.ppf(0.5 + level / 2))
    return {
        "se": se,
        "z": z,
        "p_value": float(min(1.0, 2.0 * norm.sf(abs(z)))),
        "ci_low": diff - crit * se,
        "ci_high": diff + crit * se,
    }


def delong_roc_test(
    y_binary: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, level: float = 0.95
) -> DeLongResult:
    """DeLong's test of two correlated ROC AUCs on one binary task (same cases, two scores).

    ``z = (auc_b - auc_a) / sqrt(var_a + var_b - 2 cov_ab)`` with DeLong et al. (1988)
    (co)variances, two-sided normal p-value and Wald interval. Matches R's
    ``pROC::roc.test(method="delong")`` (tested on pROC's aSAH data); higher scores mean
    "positive".

    Args:
        y_binary: bool (or 0/1) [n], the positive class; both classes must occur.
        score_a: float [n] scores of model a.
        score_b: float [n] scores of model b.
        level: coverage of the Wald interval of the difference.

    Returns:
        DeLongResult (se / z / p NaN when there are fewer than 2 positives or negatives).

    Raises:
        MetricInputError (a ValueError): malformed inputs or only one class present.
    """
    pos = check_correct(y_binary, "y_binary")
    sa = check_scores(score_a, pos.size, "score_a")
    sb = check_scores(score_b, pos.size, "score_b")
    level = check_level(level)
    m = int(pos.sum())
    if m == 0 or m == pos.size:
        raise MetricInputError("y_binary must contain both positive and negative cases")
    auc, psi = _structural_components(np.stack([sa, sb]), pos)
    cov = psi.T @ psi
    diff = float(auc[1] - auc[0])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    res = _z_test(diff, var, level)
    return DeLongResult(
        auc_a=float(auc[0]),
        auc_b=float(auc[1]),
        diff=diff,
        var_a=float(cov[0, 0]),
        var_b=float(cov[1, 1]),
        cov_ab=float(cov[0, 1]),
        n_pos=m,
        n_neg=int(pos.size - m),
        **res,
    )


DELONG_COLUMNS: tuple[str, ...] = (
    "metric",
    "auc_a",
    "auc_b",
    "diff",
    "se",
    "z",
    "p_value",
    "ci_low",
    "ci_high",
)


def delong_test(
    y_true: np.ndarray,
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    classes: Sequence[str] | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """DeLong tests of one-vs-rest AUC differences per class and of the macro-AUC difference.

    Per class k: ``delong_roc_test(y_true == k, proba_a[:, k], proba_b[:, k])``. Macro row:
    ``diff = mean_k AUC_k(b) - mean_k AUC_k(a)`` over the classes present in ``y_true`` (not
    the only one), with ``Var(diff) = sum_i phi(i)^2``, ``phi(i) = mean_k (psi_{k,b}(i) -
    psi_{k,a}(i))`` from the per-case structural components, which keeps the correlation
    between classes (derivation: ``docs/statistics.md``, "DeLong"); with K = 2 it equals the
    binary test (tested). Asymptotic: with classes under ~10 cases prefer the paired bootstrap.

    Args:
        y_true: true class indices [n].
        proba_a: model a probabilities [n, K].
        proba_b: model b probabilities [n, K].
        classes: optional K class names for the row labels (default: class indices).
        level: coverage of the Wald intervals.

    Returns:
        DataFrame with rows ``auc_<class>`` (K) then ``macro_auc`` and columns
        ``DELONG_COLUMNS``. Classes absent from ``y_true`` (or the only class present) have NaN
        rows; se/z/p are NaN for a class with fewer than 2 positives or negatives, and then
        also for the macro row.

    Raises:
        MetricInputError (a ValueError): malformed inputs or a ``classes`` list of the wrong size.
    """
    y, pa, pb = check_pair(y_true, proba_a, proba_b)
    level = check_level(level)
    n_classes = pa.shape[1]
    if classes is None:
        names = [str(k) for k in range(n_classes)]
    else:
        names = [str(c) for c in classes]
        if len(names) != n_classes:
            raise MetricInputError(
                f"classes has {len(names)} names but the probabilities have K={n_classes} columns"
            )
    support = np.bincount(y, minlength=n_classes)
    defined = np.flatnonzero((support > 0) & (support < len(y)))  # one-vs-rest AUC defined
    rows = []
    psis: list[np.ndarray] = []
    aucs: list[np.ndarray] = []
    for k in range(n_classes):
        row = dict.fromkeys(DELONG_COLUMNS, math.nan)
        row["metric"] = f"auc_{names[k]}"
        if k in defined:
            auc, psi = _structural_components(np.stack([pa[:, k], pb[:, k]]), y == k)
            aucs.append(auc)
            psis.append(psi)
            diff = float(auc[1] - auc[0])
            var = float(np.sum((psi[:, 1] - psi[:, 0]) ** 2))
            row.update(auc_a=float(auc[0]), auc_b=float(auc[1]), diff=diff)
            row.update(_z_test(diff, var, level))
        rows.append(row)
    macro = dict.fromkeys(DELONG_COLUMNS, math.nan)
    macro["metric"] = "macro_auc"
    if aucs:
        auc_mat = np.stack(aucs)  # [K', 2]
        psi_diff = np.stack([p[:, 1] - p[:, 0] for p in psis], axis=1)  # [n, K']
        phi = psi_diff.mean(axis=1)
        diff = float(auc_mat[:, 1].mean() - auc_mat[:, 0].mean())
        macro.update(auc_a=float(auc_mat[:, 0].mean()), auc_b=float(auc_mat[:, 1].mean()))
        macro["diff"] = diff
        macro.update(_z_test(diff, float(np.sum(phi**2)), level))
    rows.append(macro)
    return pd.DataFrame(rows)[list(DELONG_COLUMNS)]


__all__ = ["DELONG_COLUMNS", "DeLongResult", "delong_roc_test", "delong_test"]
