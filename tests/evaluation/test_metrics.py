"""Classification metrics equal direct scikit-learn calls, on random and degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score
from sklearn.preprocessing import label_binarize

from thyroaug.contract import CLASSES
from thyroaug.errors import ThyroaugError
from thyroaug.evaluation.metrics import (
    MetricInputError,
    compute_metrics,
    confusion,
    format_table2,
    metric_names,
    metrics_table,
    table2,
    table2_columns,
    to_markdown,
)

K = len(CLASSES)
LABELS = list(range(K))


def _probs(rng: np.random.Generator, y: np.ndarray, signal: float = 1.5) -> np.ndarray:
    logits = rng.normal(size=(len(y), K))
    logits[np.arange(len(y)), y] += signal
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _sklearn_prf(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The precision/recall/F1 keys, straight from scikit-learn."""
    out = {}
    p, r, f, _ = precision_recall_fscore_support(
        y, pred, labels=LABELS, average=None, zero_division=0
    )
    for k, c in enumerate(CLASSES):
        out[f"precision_{c}"], out[f"recall_{c}"], out[f"f1_{c}"] = p[k], r[k], f[k]
    for avg in ("micro", "macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y, pred, labels=LABELS, average=avg, zero_division=0
        )
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = p, r, f
    return out


def _assert_close(ours: dict[str, float], ref: dict[str, float]) -> None:
    for key, value in ref.items():
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_inputs_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, 150)
    p = _probs(rng, y)
    m = compute_metrics(y, p)
    assert list(m) == metric_names()
    pred = p.argmax(axis=1)
    ref = _sklearn_prf(y, pred)
    ref["accuracy"] = float(np.mean(y == pred))
    onehot = label_binarize(y, classes=LABELS)
    for avg in ("micro", "macro", "weighted"):
        ref[f"auc_{avg}"] = roc_auc_score(onehot, p, average=avg)
    # the multiclass one-vs-rest API agrees for macro / weighted
    ref_ovr = roc_auc_score(y, p, multi_class="ovr", average="macro")
    for k, c in enumerate(CLASSES):
        ref[f"auc_{c}"] = roc_auc_score(onehot[:, k], p[:, k])
    _assert_close(m, ref)
    assert m["auc_macro"] == pytest.approx(ref_ovr)
    assert all(isinstance(v, float) for v in m.values())


def test_class_never_predicted() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, K, 80)
    p = _probs(rng, y)
    p[:, 2] = 0.0  # NL never predicted
    p /= p.sum(axis=1, keepdims=True)
    m = compute_metrics(y, p)
    pred = p.argmax(axis=1)
    assert 2 not in pred
    _assert_close(m, _sklearn_prf(y, pred))
    assert m["precision_NL"] == 0.0
    assert m["recall_NL"] == 0.0
    onehot = label_binarize(y, classes=LABELS)
    assert m["auc_macro"] == pytest.approx(roc_auc_score(onehot, p, average="macro"))


def test_class_absent_from_y_true() -> None:
    rng = np.random.default_rng(4)
    y = rng.choice([0, 1, 3], size=90)  # no NL case
    p = _probs(rng, y, signal=0.8)
    assert 2 in p.argmax(axis=1)  # but NL is predicted sometimes
    m = compute_metrics(y, p)
    pred = p.argmax(axis=1)
    _assert_close(m, _sklearn_prf(y, pred))
    assert math.isnan(m["auc_NL"])
    onehot = label_binarize(y, classes=LABELS)
    present = [0, 1, 3]
    assert m["auc_macro"] == pytest.approx(
        roc_auc_score(onehot[:, present], p[:, present], average="macro")
    )
    assert m["auc_weighted"] == pytest.approx(
        roc_auc_score(onehot[:, present], p[:, present], average="weighted")
    )
    assert m["auc_micro"] == pytest.approx(roc_auc_score(onehot, p, average="micro"))
    # scikit-learn's own per-class AUCs agree (NaN for the absent class); its macro average is NaN
    # there, ours averages the defined classes (documented)
    with pytest.warns(UndefinedMetricWarning):
        per_class = roc_auc_score(onehot, p, average=None)
    np.testing.assert_allclose([m[f"auc_{c}"] for c in CLASSES], per_class, equal_nan=True)


def test_single_class_present() -> None:
    rng = np.random.default_rng(5)
    y = np.full(20, 1)
    p = _probs(rng, y)
    m = compute_metrics(y, p)
    pred = p.argmax(axis=1)
    _assert_close(m, _sklearn_prf(y, pred))
    for c in CLASSES:
        assert math.isnan(m[f"auc_{c}"])
    assert math.isnan(m["auc_macro"]) and math.isnan(m["auc_weighted"])
    onehot = label_binarize(y, classes=LABELS)
    assert m["auc_micro"] == pytest.approx(roc_auc_score(onehot, p, average="micro"))


def test_perfect_and_single_case() -> None:
    m = compute_metrics(np.arange(4), np.eye(4))
    assert m["accuracy"] == 1.0 and m["f1_macro"] == 1.0 and m["auc_macro"] == 1.0
    one = compute_metrics(np.array([2]), np.array([[0.1, 0.2, 0.6, 0.1]]))
    assert one["accuracy"] == 1.0 and math.isnan(one["auc_macro"])


def test_argmax_ties_go_to_lower_index() -> None:
    m = compute_metrics(np.array([0, 1]), np.array([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]]))
    assert m["accuracy"] == 0.5
    assert m["recall_DG"] == 1.0 and m["recall_NG"] == 0.0


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        (np.array([0, 1]), np.full((3, 4), 0.25), "inconsistent numbers"),
        (np.array([0, 1]), np.full((2, 3), 1 / 3), "shape"),
        (np.array([0, 4]), np.full((2, 4), 0.25), "outside"),
        (np.array([0, -1]), np.full((2, 4), 0.25), "outside"),
        (np.array([[0, 1]]), np.full((2, 4), 0.25), "1-D"),
        (np.array([], dtype=int), np.zeros((0, 4)), "empty"),
        (np.array(["DG", "NG"]), np.full((2, 4), 0.25), "integer"),
        (np.array([0.5, 1.0]), np.full((2, 4), 0.25), "integer"),
        (np.array([0, 1]), np.array([[2.0, -1, 0, 0], [1, 0, 0, 0]]), "logits"),
        (np.array([0, 1]), np.array([[0.5, 0.2, 0, 0], [1, 0, 0, 0]]), "sum to 1"),
        (np.array([0, 1]), np.array([[np.nan, 1, 0, 0], [1, 0, 0, 0]]), "NaN"),
    ],
)
def test_invalid_inputs_raise_clear_errors(y: np.ndarray, p: np.ndarray, match: str) -> None:
    with pytest.raises(MetricInputError, match=match) as info:
        compute_metrics(y, p)
    assert isinstance(info.value, ThyroaugError) and isinstance(info.value, ValueError)


def test_float_integer_labels_and_float32_probs_accepted() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, K, 40)
    p = _probs(rng, y).astype(np.float32)
    assert compute_metrics(y.astype(float), p) == compute_metrics(y, p.astype(np.float64))


def test_confusion_equals_sklearn_with_all_labels() -> None:
    y = np.array([0, 0, 1, 3, 3])
    pred = np.array([0, 1, 1, 3, 0])
    cm = confusion(y, pred)
    np.testing.assert_array_equal(cm, confusion_matrix(y, pred, labels=LABELS))
    assert cm.shape == (4, 4) and cm[2].sum() == 0 and cm[:, 2].sum() == 0
    with pytest.raises(MetricInputError, match="inconsistent"):
        confusion(y, pred[:3])


def test_table2_layout_and_formatting() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, K, 60)
    rows = {"O": compute_metrics(y, _probs(rng, y)), "O+FM": compute_metrics(y, _probs(rng, y, 3))}
    df = table2(rows)
    assert list(df.index) == ["O", "O+FM"] and df.index.name == "Method"
    assert df.shape == (2, 24)
    assert list(df.columns[:4]) == ["Precision DG", "Precision NG", "Precision NL", "Precision TI"]
    assert list(df.columns[12:15]) == ["AUC mic", "AUC mac", "AUC wei"]
    assert list(df.columns[-3:]) == ["F1-score mic", "F1-score mac", "F1-score wei"]
    assert df.loc["O+FM", "Recall NL"] == rows["O+FM"]["recall_NL"]
    assert [c[2] for c in table2_columns()][12] == "auc_micro"
    pd.testing.assert_frame_equal(metrics_table(rows["O"], "O"), df.iloc[[0]])

    compact = format_table2(df)
    assert list(compact.columns) == [
        "Precision (DG/NG/NL/TI)",
        "Recall (DG/NG/NL/TI)",
        "F1-score (DG/NG/NL/TI)",
        "AUC (mic/mac/wei)",
        "Precision (mic/mac/wei)",
        "Recall (mic/mac/wei)",
        "F1-score (mic/mac/wei)",
    ]
    cell = compact.loc["O", "AUC (mic/mac/wei)"]
    expected = "/".join(
        f"{100 * rows['O'][f'auc_{a}']:.0f}" for a in ("micro", "macro", "weighted")
    )
    assert cell == expected

    md = to_markdown(compact)
    lines = md.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| Method")
    assert len({len(line) for line in lines}) == 1  # aligned columns
    assert to_markdown(df).count("\n") == 4

    with pytest.raises(MetricInputError, match="lack"):
        metrics_table({"accuracy": 1.0}, "broken")


def test_format_table2_prints_nan_as_na() -> None:
    m = compute_metrics(np.full(5, 0), np.tile([[0.7, 0.1, 0.1, 0.1]], (5, 1)))
    compact = format_table2(table2({"x": m}))
    assert compact.loc["x", "AUC (mic/mac/wei)"].endswith("NA/NA")
    assert "NA" in to_markdown(table2({"x": m}))
