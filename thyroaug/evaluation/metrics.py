"""Classification metrics of the paper's Table 2 (scikit-learn), and the checks of their inputs.

``compute_metrics`` turns labels and class probabilities into one flat dict with stable names:
``accuracy``; class-wise ``precision_<C>``, ``recall_<C>``, ``f1_<C>``, ``auc_<C>`` (one vs rest)
for each class ``C`` in ``CLASSES``; averaged ``precision_{micro,macro,weighted}``, ``recall_*``,
``f1_*`` and ``auc_*``. Predictions are the arg-max of the probabilities (ties: the lower class
index). Degenerate inputs give defined values, never a crash: zero precision / recall / F1 where
scikit-learn's ``zero_division=0`` applies, NaN for an undefined one-vs-rest AUC (a class absent
from ``y_true``, or the only one present), the macro / weighted AUC over the defined classes
(``docs/statistics.md``, "Metrics").

``check_labels``, ``check_probabilities`` and the other ``check_*`` functions are the one place
where labels, probabilities, per-case correctness, scores and levels are validated; the bootstrap,
the paired tests, DeLong and the plots use them.

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


def check_labels(
    y_true: object, n_classes: int | None = None, name: str = "y_true", source: str = ""
) -> np.ndarray:
    """Validate class indices: 1-D, non-empty, whole numbers, in ``0..n_classes - 1``.

    Args:
        y_true: class indices (integers, or floats holding whole numbers).
        n_classes: K; None checks only that no label is negative (see ``check_label_range``).
        name: the argument's name in error messages.
        source: where K comes from, added to the out-of-range message.

    Returns:
        The labels as int64 [N].

    Raises:
        MetricInputError: wrong shape, empty, NaN, non-integral, a non-integer dtype, or a label
            out of range.
    """
    arr = np.asarray(y_true)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D class indices, got shape {arr.shape}")
    if arr.size == 0:
        raise MetricInputError(f"{name} is empty; need at least one case")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise MetricInputError(f"{name} contains NaN or inf")
        if not np.all(arr == np.round(arr)):
            raise MetricInputError(f"{name} must hold integer class indices, got non-integers")
    elif arr.dtype.kind not in "iu":
        raise MetricInputError(
            f"{name} must hold integer class indices, got dtype {arr.dtype}; "
            "map class names with CLASSES.index(name)"
        )
    arr = arr.astype(np.int64)
    if n_classes is not None:
        check_label_range(arr, n_classes, name, source)
    elif arr.min() < 0:
        raise MetricInputError(f"{name} has negative label(s), e.g. {int(arr.min())}")
    return arr


def check_label_range(
    y: np.ndarray, n_classes: int, name: str = "y_true", source: str = ""
) -> None:
    """Raise ``MetricInputError`` unless every label of ``y`` lies in ``0..n_classes - 1``.

    Args:
        y: int64 labels (from ``check_labels``).
        n_classes: K.
        name: the argument's name in error messages.
        source: where K comes from, e.g. ``"K=4 from the probability columns"``.
    """
    bad = y[(y < 0) | (y >= n_classes)]
    if bad.size:
        where = f" ({source})" if source else ""
        raise MetricInputError(
            f"{name} has label(s) {sorted(set(bad.tolist()))[:5]} outside 0..{n_classes - 1}{where}"
        )


def check_probabilities(
    y_prob: object,
    n_cases: int,
    n_classes: int | None = None,
    name: str = "y_prob",
    ref: str = "",
) -> np.ndarray:
    """Validate an ``[n_cases, K]`` probability matrix: finite, in [0, 1], rows summing to 1.

    Rows may sum to 1 within ``PROBABILITY_ATOL``.

    Args:
        y_prob: the matrix.
        n_cases: the number of labels it must match.
        n_classes: K it must have; None accepts any K >= 2.
        name: the argument's name in error messages.
        ref: the argument K was taken from (e.g. ``"proba_a"``), named when K differs.

    Returns:
        The matrix as float64.

    Raises:
        MetricInputError: wrong shape or K, NaN, values outside [0, 1] (logits?) or rows not
            summing to 1.
    """
    arr = np.asarray(y_prob, dtype=np.float64)
    if arr.ndim != 2:
        want = "K" if n_classes is None else n_classes
        raise MetricInputError(f"{name} must have shape [n_cases, {want}], got {arr.shape}")
    if arr.shape[0] != n_cases:
        raise MetricInputError(
            f"Found inconsistent numbers of cases: y_true has {n_cases}, {name} has "
            f"{arr.shape[0]} rows (shape mismatch)"
        )
    k = arr.shape[1]
    if n_classes is None and k < 2:
        raise MetricInputError(f"{name} needs K >= 2 class columns, got {k}")
    if n_classes is not None and k != n_classes:
        if ref:
            raise MetricInputError(f"{name} has K={k} class columns but {ref} has K={n_classes}")
        raise MetricInputError(f"{name} must have shape [n_cases, {n_classes}], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise MetricInputError(f"{name} contains NaN or inf")
    if arr.min() < 0 or arr.max() > 1:
        raise MetricInputError(
            f"{name} values must lie in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]; "
            "pass softmax probabilities, not logits"
        )
    sums = arr.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1) > PROBABILITY_ATOL)
    if off.size:
        raise MetricInputError(
            f"{name} rows must sum to 1 (±{PROBABILITY_ATOL}); {off.size} row(s) do not, "
            f"e.g. row {off[0]} sums to {sums[off[0]]:.4f}; apply softmax to the logits"
        )
    return arr


def check_pair(
    y_true: object, proba_a: object, proba_b: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate two models' probabilities on the same labels (one K, labels in 0..K-1).

    Returns:
        (int64 labels [n], float64 ``proba_a`` [n, K], float64 ``proba_b`` [n, K]).

    Raises:
        MetricInputError: as ``check_labels`` / ``check_probabilities``, naming the argument.
    """
    y = check_labels(y_true)
    pa = check_probabilities(proba_a, len(y), name="proba_a")
    k = pa.shape[1]
    pb = check_probabilities(proba_b, len(y), k, name="proba_b", ref="proba_a")
    check_label_range(y, k, source=f"K={k} from the probability columns")
    return y, pa, pb


def check_correct(values: object, name: str) -> np.ndarray:
    """Validate per-case correctness (or a binary target): 1-D, boolean or 0/1, no NaN.

    Returns:
        bool [N].

    Raises:
        MetricInputError: wrong shape, NaN, or values other than 0/1.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D per-case correctness, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise MetricInputError(f"{name} contains NaN or inf")
    if arr.dtype.kind != "b" and (
        arr.dtype.kind not in "iuf" or not np.all((arr == 0) | (arr == 1))
    ):
        raise MetricInputError(f"{name} must be boolean (or 0/1), got dtype {arr.dtype}")
    return arr.astype(bool)


def check_scores(values: object, n_cases: int, name: str) -> np.ndarray:
    """Validate one score per case: 1-D, ``n_cases`` long, finite.

    Returns:
        float64 [n_cases].

    Raises:
        MetricInputError: wrong shape or length, NaN or inf.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D scores, got shape {arr.shape}")
    if arr.shape[0] != n_cases:
        raise MetricInputError(
            f"{name} has {arr.shape[0]} values but the labels have {n_cases} (shape mismatch)"
        )
    if not np.all(np.isfinite(arr)):
        raise MetricInputError(f"{name} contains NaN or inf")
    return arr


def check_level(level: float, name: str = "level") -> float:
    """Validate a level, alpha or power strictly between 0 and 1 and return it as float.

    Raises:
        MetricInputError: not a number in (0, 1).
    """
    if not (isinstance(level, (int, float, np.floating)) and 0 < float(level) < 1):
        raise MetricInputError(f"{name} must lie in (0, 1), got {level!r}")
    return float(level)


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
