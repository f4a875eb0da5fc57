"""Memorisation audit: planted near-copies are flagged, fresh phantom patients are not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from thyroaug.contract import CLASSES
from thyroaug.data.preprocess import PreprocessSettings, preprocess_case
from thyroaug.evaluation.fidelity import ResNet18Features
from thyroaug.evaluation.memorisation import (
    FLAGGED_KEY,
    audit_key,
    audit_memorisation,
    audit_notes,
    audit_summary,
    closest_pairs_figure,
    expected_fraction,
    nearest_training,
    threshold_rank,
)
from thyroaug.phantom import plan_cohort, simulate_case


def phantom(seed: int, scale: float, centers: str, size: int = 32):
    """Phantom cases of the simulator, preprocessed as ``prepare`` does: images, labels, ids."""
    settings = PreprocessSettings(size=size)
    images, labels, ids = [], [], []
    for plan in plan_cohort(seed=seed, scale=scale, centers=centers):
        counts = simulate_case(plan, seed).acquisition.counts.astype(np.float64)
        image, _, _ = preprocess_case(counts, None, settings)
        images.append(image[None])
        labels.append(CLASSES.index(plan.label))
        ids.append(plan.case_id)
    return np.stack(images), np.array(labels), ids


@pytest.fixture(scope="module")
def cohort():
    """Training patients (centers A-F) and external patients (G-I) of one phantom seed."""
    train, train_labels, train_ids = phantom(1, 0.05, "ABCDEF")
    external, external_labels, _ = phantom(1, 0.1, "GHI")
    return train, train_labels, train_ids, external, external_labels


@pytest.fixture(scope="module")
def features():
    extractor = ResNet18Features(device="cpu")
    return lambda x: extractor(torch.from_numpy(x).float())


def audit(cohort, features, generated, labels):
    train, train_labels, train_ids, external, external_labels = cohort
    feats = (features(generated), features(train), features(external))
    return audit_memorisation(
        generated,
        labels,
        train,
        train_labels,
        train_ids,
        external,
        external_labels,
        features=feats,
        feature_name="resnet18-random",
    )


def test_a_set_with_planted_near_copies_is_flagged(cohort, features):
    train, train_labels, train_ids = cohort[:3]
    fresh, fresh_labels, _ = phantom(2, 0.03, "ABCDEF")
    rng = np.random.default_rng(0)
    copied = rng.choice(len(train), 20, replace=False)
    copies = np.clip(train[copied] + 0.01 * rng.standard_normal(train[copied].shape), 0, 1)
    generated = np.concatenate([fresh[:60], copies])
    labels = np.concatenate([fresh_labels[:60], train_labels[copied]])
    result = audit(cohort, features, generated, labels)
    assert result.flagged and result.metrics[FLAGGED_KEY] == 1.0
    for space in ("pixel", "feature"):
        frac = result.metrics[audit_key(space, "any", "near_copy_frac", "overall")]
        assert frac >= 20 / 80 > result.metrics["memorisation_flag_limit"]
        top = result.pairs[result.pairs["ranked_by"] == space]  # the 16 closest pairs
        assert len(top) == 16 and top["near_copy"].all()
        for pair in top.itertuples():  # each a copy, paired with the image it copies
            assert pair.generated_index >= 60
            assert pair.train_case_id == train_ids[copied[pair.generated_index - 60]]
    assert result.summary.startswith("memorisation audit: near-copies")
    assert not any(case_id in result.summary for case_id in train_ids)


def test_fresh_phantom_patients_are_not_flagged(cohort, features):
    fresh, fresh_labels, _ = phantom(2, 0.03, "ABCDEFGHI")  # new patients of every center
    result = audit(cohort, features, fresh, fresh_labels)
    assert not result.flagged and result.summary.startswith("memorisation audit: passed")
    m = result.metrics
    assert m["memorisation_n_reference"] == 41 and m["memorisation_expected_frac"] == 1 / 42
    for space in ("pixel", "feature"):
        assert (
            m[audit_key(space, "any", "near_copy_frac", "overall")] <= m["memorisation_flag_limit"]
        )
        assert 0.8 < m[audit_key(space, "any", "median_ratio", "overall")] < 1.2
        for group in (*CLASSES, "overall"):
            assert audit_key(space, "same", "min", group) in m


def test_nearest_training_equals_brute_force():
    rng = np.random.default_rng(3)
    train, train_labels = rng.random((30, 2, 4, 4)), rng.integers(0, 3, 30)  # no class 3
    queries, query_labels = rng.random((12, 2, 4, 4)), np.array([0, 1, 2, 3] * 3)
    near = nearest_training(queries, query_labels, train, train_labels, chunk=5)
    d = np.linalg.norm(queries.reshape(12, 1, -1) - train.reshape(1, 30, -1), axis=2)
    assert np.array_equal(near["any"].index, d.argmin(1))
    assert np.allclose(near["any"].distance, d.min(1))
    for i, label in enumerate(query_labels):
        if label == 3:
            assert near["same"].index[i] == -1 and np.isinf(near["same"].distance[i])
        else:
            rows = np.flatnonzero(train_labels == label)
            assert near["same"].index[i] == rows[d[i, rows].argmin()]
            assert near["same"].distance[i] == pytest.approx(d[i, rows].min())


def test_threshold_is_an_order_statistic_with_a_known_rate():
    assert threshold_rank(101) == 1 and threshold_rank(399) == 4 and threshold_rank(5) == 1
    assert expected_fraction(399) == pytest.approx(0.01)
    assert expected_fraction(20) == pytest.approx(1 / 21)


def test_pixel_only_audit_pairs_and_figure():
    rng = np.random.default_rng(1)
    train, train_labels = rng.random((40, 1, 8, 8)), np.repeat(np.arange(4), 10)
    ids = [f"case{i:02d}" for i in range(40)]
    reference, reference_labels = rng.random((20, 1, 8, 8)), np.repeat(np.arange(4), 5)
    generated = np.concatenate([train[:3], rng.random((9, 1, 8, 8))])
    labels = np.concatenate([train_labels[:3], np.repeat(np.arange(3), 3)])
    result = audit_memorisation(
        generated, labels, train, train_labels, ids, reference, reference_labels, k_pairs=4
    )
    assert result.flagged  # 3 exact copies of 12 > 5 x 1/21
    assert not any(k.startswith("memorisation_feature") for k in result.metrics)
    assert list(result.pairs["ranked_by"]) == ["pixel"] * 4
    assert set(result.pairs["train_case_id"][:3]) == {"case00", "case01", "case02"}
    assert result.pairs["pixel_distance"][:3].max() == pytest.approx(0, abs=1e-6)
    assert result.pairs["feature_distance"].isna().all()
    assert audit_key("pixel", "any", "near_copy_frac", "TI") not in result.metrics  # none made
    figure = closest_pairs_figure(result.pairs, generated, train)
    assert isinstance(figure, Figure) and len(figure.axes) == 4 * 2
    with pytest.raises(ValueError, match="each needs at least one"):
        audit_memorisation(generated, labels, train, train_labels, ids, reference[:0], [])


def test_summary_and_notes_from_run_metrics():
    flagged = {
        FLAGGED_KEY: 1.0,
        audit_key("pixel", "any", "near_copy_frac", "overall"): 0.25,
        audit_key("pixel", "any", "median_ratio", "overall"): 0.4,
        "memorisation_n_generated": 80.0,
        "memorisation_n_reference": 101.0,
        "memorisation_expected_frac": 1 / 102,
        "memorisation_flag_limit": 5 / 102,
    }
    passed = {**flagged, FLAGGED_KEY: 0.0}
    synth = {"FM": passed, "SD2": flagged, "SD1": {"fid_resnet18-O_DG": 1.0}}
    summary = audit_summary(synth)
    assert list(summary["method"]) == ["FM", "SD2"] and list(summary["flagged"]) == [False, True]
    notes = audit_notes(synth)
    assert notes[0].startswith("SD2: memorisation audit: near-copies - 25.0 % (pixel space)")
    assert "closest of 101 external images (new patients: 1.0 %; flag above 4.9 %)" in notes[0]
    assert "passed" in notes[1] and "FM" in notes[1]
    assert notes[2] == "No memorisation audit for SD1 (run logged without one)."
