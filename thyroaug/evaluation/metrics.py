"""Classification metrics of the paper's Table 2, computed with scikit-learn.

``compute_metrics`` turns labels and class probabilities into one flat dict with stable names:

- ``accuracy``;
- class-wise ``precision_<C>``, ``recall_<C>``, ``f1_<C>``, ``auc_<C>`` (one vs rest) for each class
  ``C`` in ``CLASSES`` (DG, NG, NL, TI);
- averaged ``precision_{micro,macro,weighted}``, ``recall_*``, ``f1_*`` and ``auc_*``.

Predictions are the arg-max of the probabilities (ties go to the lower class index, as
``numpy.argmax``). Precision / recall / F1 come from ``precision_recall_fscore_support`` with all
class labels given and ``zero_division=0``; AUCs from ``roc_auc_score`` on one-hot labels.

Degenerate inputs are defined, never a crash:

- a class that is never predicted has precision 0 (``zero_division=0``), and so F1 0;
- a class absent from ``y_true`` has recall 0 and F1 0 (scikit-learn with ``labels`` given, so the
  macro averages of precision/recall/F1 include those zeros, as scikit-learn does); its one-vs-rest
  AUC is undefined and reported as NaN. ``auc_macro`` is the mean over the classes whose AUC is
  defined, ``auc_weighted`` the support-weighted mean over them (an absent class has support 0);
- a single class present in ``y_true``: every class-wise AUC, ``auc_macro`` and ``auc_weighted`` are
  NaN. ``auc_micro`` stays defined (the flattened one-hot target always has both 0s and 1s) and
  equals ``roc_auc_score(label_binarize(y_true), y_prob, average="micro")``.

Example:
    >>> import numpy as np
    >>> m = compute_metrics(np.array([0, 1, 2, 3]), np.eye(4))
    >>> m["accuracy"], m["auc_macro"]
    (1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from thyroaug.contract import CLASSES
from thyroaug.errors import ThyroaugError

AVERAGES: tuple[str, ...] = ("micro", "macro", "weighted")
PROBABILITY_ATOL: float = 1e-3
"""How far a probability row may sum from 1 (float32 softmax is well inside this)."""

_TABLE2_SHORT: dict[str, str] = {"micro": "mic", "macro": "mac", "weighted": "wei"}


class MetricInputError(ThyroaugError, ValueError):
    """Labels or probabilities handed to a metric are malformed (shape, range, sums)."""


def metric_names(classes: Sequence[str] = CLASSES) -> list[str]:
    """All keys ``compute_metrics`` returns, in a fixed order.

    Args:
        classes: class names in index order.

    Returns:
        ``accuracy``, then class-wise precision/recall/F1/AUC, then the averaged ones.
    """
    names = ["accuracy"]
    for kind in ("precision", "recall", "f1", "auc"):
        names += [f"{kind}_{c}" for c in classes]
    for kind in ("precision", "recall", "f1", "auc"):
        names += [f"{kind}_{avg}" for avg in AVERAGES]
    return names


def check_labels(y_true: np.ndarray, n_classes: int, name: str = "y_true") -> np.ndarray:
    """Validate integer class indices in ``[0, n_classes)`` and return them as int64 1-D."""
    arr = np.asarray(y_true)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D class indices, got shape {arr.shape}")
    if arr.size == 0:
        raise MetricInputError(f"{name} is empty; metrics need at least one case")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise MetricInputError(f"{name} must hold integer class indices, got non-integers")
    elif arr.dtype.kind not in "iu":
        raise MetricInputError(
            f"{name} must hold integer class indices 0..{n_classes - 1}, got dtype {arr.dtype}; "
            "map class names with CLASSES.index(name)"
        )
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= n_classes)]
    if bad.size:
        raise MetricInputError(
            f"{name} has label(s) {sorted(set(bad.tolist()))[:5]} outside 0..{n_classes - 1}"
        )
    return arr


def check_probabilities(y_prob: np.ndarray, n_cases: int, n_classes: int) -> np.ndarray:
    """Validate an ``[n_cases, n_classes]`` probability matrix whose rows sum to ~1."""
    arr = np.asarray(y_prob, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != n_classes:
        raise MetricInputError(
            f"y_prob must have shape [n_cases, {n_classes}], got {tuple(arr.shape)}"
        )
    if arr.shape[0] != n_cases:
        raise MetricInputError(
            f"Found inconsistent numbers of cases: y_true has {n_cases}, y_prob has {arr.shape[0]}"
        )
    if not np.all(np.isfinite(arr)):
        raise MetricInputError("y_prob contains NaN or inf")
    if arr.min() < 0 or arr.max() > 1:
        raise MetricInputError(
            f"y_prob values must lie in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]; "
            "pass softmax probabilities, not logits"
        )
    sums = arr.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1) > PROBABILITY_ATOL)
    if off.size:
        raise MetricInputError(
            f"y_prob rows must sum to 1 (±{PROBABILITY_ATOL}); {off.size} row(s) do not, "
            f"e.g. row {off[0]} sums to {sums[off[0]]:.4f}; apply softmax to the logits"
        )
    return arr


def predict(y_prob: np.ndarray) -> np.ndarray:
    """Arg-max class of each probability row (ties: the lower class index)."""
    return np.asarray(y_prob).argmax(axis=1).astype(np.int64)


def one_vs_rest_auc(
    y_true: np.ndarray, y_prob: np.ndarray, n_classes: int
) -> tuple[np.ndarray, dict[str, float]]:
    """Class-wise and averaged one-vs-rest ROC AUCs with NaN for undefined classes.

    Args:
        y_true: validated class indices [N].
        y_prob: validated probabilities [N, K].
        n_classes: K.

    Returns:
        (per-class AUC [K] with NaN where a class is absent or the only one present,
        {"micro", "macro", "weighted"} averages as described in the module docstring).
    """
    onehot = np.eye(n_classes, dtype=np.int64)[y_true]
    support = onehot.sum(axis=0)
    defined = (support > 0) & (support < len(y_true))
    per_class = np.full(n_classes, np.nan)
    for k in np.flatnonzero(defined):
        per_class[k] = roc_auc_score(onehot[:, k], y_prob[:, k])
    if defined.any():
        macro = float(per_class[defined].mean())
        weighted = float(np.average(per_class[defined], weights=support[defined]))
    else:
        macro = weighted = math.nan
    micro = float(roc_auc_score(onehot.ravel(), y_prob.ravel()))
    return per_class, {"micro": micro, "macro": macro, "weighted": weighted}


def compute_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str] = CLASSES
) -> dict[str, float]:
    """Accuracy, class-wise and averaged precision / recall / F1 / one-vs-rest AUC.

    Args:
        y_true: true class indices [N] (0..K-1 in ``classes`` order).
        y_prob: class probabilities [N, K] (rows sum to 1; softmax output).
        classes: class names in index order; they name the class-wise keys.

    Returns:
        A flat dict of floats keyed as ``metric_names(classes)`` (NaN where undefined, see the
        module docstring).

    Raises:
        MetricInputError: shapes disagree, labels outside 0..K-1, probabilities outside [0, 1]
            or rows not summing to 1.
    """
    n_classes = len(classes)
    if n_classes < 2:
        raise MetricInputError(f"need at least two classes, got {list(classes)}")
    y_true = check_labels(y_true, n_classes)
    y_prob = check_probabilities(y_prob, len(y_true), n_classes)
    y_pred = predict(y_prob)
    labels = list(range(n_classes))

    out: dict[str, float] = {"accuracy": float(np.mean(y_true == y_pred))}
    prec, rec, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    auc_per_class, auc_avg = one_vs_rest_auc(y_true, y_prob, n_classes)
    for kind, values in (("precision", prec), ("recall", rec), ("f1", f1), ("auc", auc_per_class)):
        for name, value in zip(classes, values):
            out[f"{kind}_{name}"] = float(value)
    for avg in AVERAGES:
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out[f"precision_{avg}"] = float(p)
        out[f"recall_{avg}"] = float(r)
        out[f"f1_{avg}"] = float(f)
    for avg in AVERAGES:
        out[f"auc_{avg}"] = auc_avg[avg]
    return {name: out[name] for name in metric_names(classes)}


def confusion(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str] = CLASSES
) -> np.ndarray:
    """Confusion matrix [K, K] (rows: true class, columns: predicted), all K classes kept.

    Args:
        y_true: true class indices [N].
        y_pred: predicted class indices [N].
        classes: class names in index order (only their number matters).

    Returns:
        int64 counts; row/column ``k`` is class ``classes[k]`` even when it never occurs.
    """
    n_classes = len(classes)
    y_true = check_labels(y_true, n_classes)
    y_pred = check_labels(y_pred, n_classes, name="y_pred")
    if len(y_pred) != len(y_true):
        raise MetricInputError(
            f"Found inconsistent numbers of cases: y_true has {len(y_true)}, "
            f"y_pred has {len(y_pred)}"
        )
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes))).astype(np.int64)


def table2_columns(classes: Sequence[str] = CLASSES) -> list[tuple[str, str, str]]:
    """Table 2 columns in the paper's order as (group, item, metric key).

    Groups: Precision / Recall / F1-score per class, then AUC, Precision, Recall, F1-score with
    items ``mic``/``mac``/``wei``.
    """
    cols: list[tuple[str, str, str]] = []
    for group, kind in (("Precision", "precision"), ("Recall", "recall"), ("F1-score", "f1")):
        cols += [(group, c, f"{kind}_{c}") for c in classes]
    for group, kind in (
        ("AUC", "auc"),
        ("Precision", "precision"),
        ("Recall", "recall"),
        ("F1-score", "f1"),
    ):
        cols += [(group, _TABLE2_SHORT[a], f"{kind}_{a}") for a in AVERAGES]
    return cols


def metrics_table(
    metrics: Mapping[str, float], name: str, classes: Sequence[str] = CLASSES
) -> pd.DataFrame:
    """One row of Table 2: numeric fractions, columns named ``"<group> <item>"``.

    Args:
        metrics: a ``compute_metrics`` dict (extra keys are ignored).
        name: the row label (scenario / method, e.g. ``"O+FM"``).
        classes: class names in index order.

    Returns:
        A one-row DataFrame indexed by ``Method`` with 24 columns such as ``"Precision DG"``,
        ``"AUC mic"``, ``"F1-score wei"`` in the paper's order.

    Raises:
        MetricInputError: a needed metric is missing.
    """
    cols = table2_columns(classes)
    missing = [key for _, _, key in cols if key not in metrics]
    if missing:
        raise MetricInputError(
            f"metrics for {name!r} lack {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
            + "; build them with compute_metrics"
        )
    row = {f"{g} {i}": float(metrics[key]) for g, i, key in cols}
    return pd.DataFrame([row], index=pd.Index([name], name="Method"))


def table2(
    rows: Mapping[str, Mapping[str, float]], classes: Sequence[str] = CLASSES
) -> pd.DataFrame:
    """Stack several scenarios' metrics into Table 2 (numeric, one row per scenario, input order).

    Args:
        rows: {scenario name: compute_metrics dict}.
        classes: class names in index order.

    Returns:
        A DataFrame like ``metrics_table`` with one row per scenario.
    """
    if not rows:
        raise MetricInputError("table2 needs at least one scenario")
    return pd.concat([metrics_table(m, name, classes) for name, m in rows.items()])


def format_table2(df: pd.DataFrame, scale: float = 100.0, digits: int = 0) -> pd.DataFrame:
    """Condense a numeric Table 2 into the paper's printed layout (``"70/65/53/96"`` cells).

    Args:
        df: output of ``table2`` / ``metrics_table`` (columns ``"<group> <item>"``).
        scale: multiply values by this (the paper prints percentages without the % sign).
        digits: decimals kept after scaling. NaN prints as ``NA``.

    Returns:
        A string DataFrame with columns like ``"Precision (DG/NG/NL/TI)"``, ``"AUC (mic/mac/wei)"``.
    """
    groups: dict[tuple[str, bool], list[str]] = {}
    for col in df.columns:
        group, item = str(col).rsplit(" ", 1)
        averaged = item in _TABLE2_SHORT.values()
        groups.setdefault((group, averaged), []).append(col)

    def fmt(value: float) -> str:
        return "NA" if not np.isfinite(value) else f"{value * scale:.{digits}f}"

    out = {}
    for (group, _), cols in groups.items():
        items = "/".join(str(c).rsplit(" ", 1)[1] for c in cols)
        out[f"{group} ({items})"] = [
            "/".join(fmt(float(v)) for v in values) for values in df[cols].to_numpy()
        ]
    return pd.DataFrame(out, index=df.index)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f", index: bool = True) -> str:
    """Render a DataFrame as a GitHub-flavoured Markdown table (no ``tabulate`` needed).

    Args:
        df: the table.
        floatfmt: format spec for float cells (NaN prints as ``NA``).
        index: include the index as the first column (named by ``df.index.name``).

    Returns:
        The table as text, columns padded to equal width, numbers right-aligned.
    """

    def cell(value: object) -> str:
        if isinstance(value, (float, np.floating)):
            return "NA" if not np.isfinite(value) else format(value, floatfmt)
        return str(value).replace("|", "\\|")

    header = [str(c) for c in df.columns]
    body = [[cell(v) for v in row] for row in df.itertuples(index=False, name=None)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    if index:
        header = [str(df.index.name or ""), *header]
        body = [[cell(i), *row] for i, row in zip(df.index, body)]
        numeric = [False, *numeric]
    widths = [max([len(h)] + [len(r[j]) for r in body] + [3]) for j, h in enumerate(header)]

    def line(values: list[str]) -> str:
        cells = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(cells) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)
        )
        + "|"
    )
    return "\n".join([line(header), rule, *(line(r) for r in body)]) + "\n"
