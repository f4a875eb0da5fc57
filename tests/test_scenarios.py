"""Scenario grammar, synthetic-set inputs and training-set assembly (thyroaug.scenarios)."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from thyroaug.contract import CLASSES
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ScenarioError
from thyroaug.scenarios import (
    PAPER_SCENARIOS,
    Scenario,
    assemble_training_set,
    assert_not_augmented,
    canonical,
    check_compatible,
    check_no_leakage,
    parse_synthetic_args,
    parts,
    resolve_synthetic,
)
from thyroaug.synthetic import SyntheticSet


def fake_set(
    method: str,
    per_class: int,
    size: int = 32,
    seed: int = 0,
    source_ids: list[str] | None = None,
    cohort_hash: str = "",
) -> SyntheticSet:
    """A small synthetic set: class k images are constant (k + 1) / 10 plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    images = (labels.float()[:, None, None, None] + 1) / 10 + 0.01 * torch.randn(
        len(labels), 1, size, size, generator=g
    )
    n = len(labels)
    manifest = pd.DataFrame(
        {
            "index": np.arange(n),
            "label": [CLASSES[i] for i in labels],
            "method": method,
            "generator_uri": f"models:/fake-{method.lower()}/1",
            "generator_version": "1",
            "seed": seed,
            "source_id": source_ids if source_ids is not None else [""] * n,
        }
    )
    return SyntheticSet(images, labels, manifest, {"method": method, "cohort_hash": cohort_hash})


@pytest.fixture
def local_store(tracking_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tracking_home`` whose artifacts also stay under it.

    ``mlflow.set_tracking_uri`` (called by ``tracking_home``) exports MLFLOW_TRACKING_URI, which
    ``configure_tracking`` treats as an explicit store without an artifact location, so MLflow
    would default artifacts to ./mlruns in the working directory.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tracking_home


# --- grammar -------------------------------------------------------------------------------


def test_paper_scenarios_are_the_18_in_order() -> None:
    assert len(PAPER_SCENARIOS) == 18
    assert PAPER_SCENARIOS[:8] == ("O", "CA", "SD1", "SD2", "SD3", "SD4", "FM", "O+CA")
    assert PAPER_SCENARIOS[12:] == (
        "O+FM",
        "O+SD1+CA",
        "O+SD2+CA",
        "O+SD3+CA",
        "O+SD4+CA",
        "O+FM+CA",
    )
    assert len(set(PAPER_SCENARIOS)) == 18
    assert all(canonical(s) == s for s in PAPER_SCENARIOS)


@pytest.mark.parametrize("name", PAPER_SCENARIOS)
def test_any_order_gives_the_canonical_name(name: str) -> None:
    for perm in itertools.permutations(name.split("+")):
        assert canonical("+".join(perm)) == name
        assert canonical(" + ".join(p.lower() for p in perm)) == name


def test_canonical_order_of_other_combinations() -> None:
    assert canonical("CA+O+FM") == "O+FM+CA"
    assert canonical("FM+SD4+SD1+O") == "O+SD1+SD4+FM"
    assert canonical("CA+SD2") == "SD2+CA"
    sc = Scenario.parse("CA+SD3+O")
    assert sc.parts == ("O", "SD3", "CA")
    assert sc.uses_original and sc.uses_ca
    assert sc.generator_methods == ("SD3",)
    assert sc.synthetic_methods == ("SD3", "CA")
    assert str(sc) == "O+SD3+CA"
    assert not Scenario.parse("FM").uses_original
    assert Scenario.parse(sc) is sc


@pytest.mark.parametrize("bad", ["O+XX", "O+SD5", "O+fm2", "GAN"])
def test_unknown_part_lists_the_valid_ones(bad: str) -> None:
    with pytest.raises(ScenarioError) as err:
        canonical(bad)
    message = str(err.value)
    assert "unknown part" in message
    for part in parts():
        assert part in message


@pytest.mark.parametrize("bad", ["O+O", "O+CA+ca", "FM+O+FM"])
def test_duplicate_part_is_an_error(bad: str) -> None:
    with pytest.raises(ScenarioError, match="twice"):
        canonical(bad)


@pytest.mark.parametrize("bad", ["", "  ", "O+", "+CA"])
def test_empty_scenario_or_part_is_an_error(bad: str) -> None:
    with pytest.raises(ScenarioError):
        canonical(bad)


def test_parse_synthetic_args() -> None:
    refs = parse_synthetic_args(["fm=runs:/abc/synthetic/FM", "SD1=/data/sd1"])
    assert refs == {"FM": "runs:/abc/synthetic/FM", "SD1": "/data/sd1"}
    assert parse_synthetic_args(None) == {}
    packed = parse_synthetic_args(["FM=runs:/a/synthetic/FM, sd1=/x/y,z", ""])  # MLproject form
    assert packed == {"FM": "runs:/a/synthetic/FM", "SD1": "/x/y,z"}
    for bad in (["FM"], ["FM="], ["GAN=x"], ["FM=a", "FM=b"]):
        with pytest.raises(ScenarioError):
            parse_synthetic_args(bad)


# --- training-set assembly ------------------------------------------------------------------


def test_original_only_is_the_training_split(tiny_cohort: PreparedCohort) -> None:
    train = tiny_cohort.subset("train")
    ts = assemble_training_set("O", train, per_class=8, progress=False)
    assert len(ts) == len(train)
    assert torch.equal(ts.images, train.images)
    assert set(ts.sources) == {"O"}
    assert list(ts.ids) == train.table["case_id"].tolist()


def test_o_plus_ca_counts_and_sources(tiny_cohort: PreparedCohort) -> None:
    train = tiny_cohort.subset("train")
    ts = assemble_training_set("CA+O", train, per_class=8, seed=1, progress=False)
    counts = ts.counts()
    assert list(counts.index) == ["O", "CA"]
    assert counts.loc["CA", list(CLASSES)].tolist() == [8, 8, 8, 8]
    assert counts.loc["O", "total"] == len(train)
    assert len(ts) == len(train) + 32
    assert ts.scenario == "O+CA"
    # CA images are new images, not copies of originals
    ca = ts.images[torch.as_tensor(ts.sources == "CA")]
    assert not any(torch.equal(ca[0], img) for img in train.images)
    ca_only = assemble_training_set("CA", train, per_class=5, progress=False)
    assert set(ca_only.sources) == {"CA"} and len(ca_only) == 20


def test_synthetic_set_subsampled_per_class_with_seed(tiny_cohort: PreparedCohort) -> None:
    train = tiny_cohort.subset("train")
    fm = fake_set("FM", per_class=10)
    a = assemble_training_set("O+FM", train, {"FM": fm}, per_class=4, seed=3, progress=False)
    b = assemble_training_set("O+FM", train, {"FM": fm}, per_class=4, seed=3, progress=False)
    c = assemble_training_set("O+FM", train, {"FM": fm}, per_class=4, seed=4, progress=False)
    assert a.counts().loc["FM", list(CLASSES)].tolist() == [4, 4, 4, 4]
    assert list(a.ids) == list(b.ids)
    assert list(a.ids) != list(c.ids)
    fm_labels = a.labels[torch.as_tensor(a.sources == "FM")]
    fm_means = a.images[torch.as_tensor(a.sources == "FM")].mean(dim=(1, 2, 3))
    assert torch.allclose(fm_means, (fm_labels.float() + 1) / 10, atol=0.01)  # labels kept aligned


def test_fewer_images_than_asked_uses_all_and_warns(
    tiny_cohort: PreparedCohort, caplog: pytest.LogCaptureFixture
) -> None:
    fm = fake_set("FM", per_class=2)
    with caplog.at_level(logging.WARNING):
        ts = assemble_training_set(
            "FM", tiny_cohort.subset("train"), {"FM": fm}, per_class=5, progress=False
        )
    assert len(ts) == 8
    assert "fewer than the 5 per class" in caplog.text


def test_missing_generator_set_says_how_to_produce_it(tiny_cohort: PreparedCohort) -> None:
    with pytest.raises(ScenarioError) as err:
        assemble_training_set("O+FM+CA", tiny_cohort.subset("train"), {}, progress=False)
    message = str(err.value)
    assert "FM" in message
    assert "mlflow run . -e synthesize -P generator=models:/thyroaug-fm@champion" in message
    assert "thyroaug synthesize" in message


def test_validation_or_external_rows_are_never_trained_on(tiny_cohort: PreparedCohort) -> None:
    with pytest.raises(ScenarioError, match="not in the training split"):
        assemble_training_set("O", tiny_cohort, progress=False)
    with pytest.raises(ScenarioError, match="not in the training split"):
        assemble_training_set("CA", tiny_cohort.subset("val"), progress=False)
    ts = assemble_training_set("O+CA", tiny_cohort.subset("train"), per_class=6, progress=False)
    held_out = set(tiny_cohort.table.loc[tiny_cohort.table["split"] != "train", "case_id"])
    assert not held_out & set(ts.ids)


def test_evaluation_sets_checked_against_the_cohort(tiny_cohort: PreparedCohort) -> None:
    val = tiny_cohort.subset("val")
    ext = tiny_cohort.subset("external")
    assert_not_augmented(val, tiny_cohort, "val")
    assert_not_augmented(ext, tiny_cohort, "external")
    tampered = tiny_cohort.subset("external")
    tampered.images[0] += 0.01
    with pytest.raises(ScenarioError, match="never be augmented"):
        assert_not_augmented(tampered, tiny_cohort, "external")
    with pytest.raises(ScenarioError, match="exactly"):
        assert_not_augmented(val, tiny_cohort, "external")
    with pytest.raises(ScenarioError):
        assert_not_augmented(tiny_cohort.subset("train"), tiny_cohort, "train")


def test_sets_conditioned_on_held_out_cases_are_refused(tiny_cohort: PreparedCohort) -> None:
    val_id = tiny_cohort.table.loc[tiny_cohort.table["split"] == "val", "case_id"].iloc[0]
    train_id = tiny_cohort.table.loc[tiny_cohort.table["split"] == "train", "case_id"].iloc[0]
    ok = fake_set("SD1", 1, source_ids=[train_id] * 4)
    check_no_leakage({"SD1": ok}, tiny_cohort)
    leaky = fake_set("SD1", 1, source_ids=[train_id, val_id, "", train_id])
    with pytest.raises(ScenarioError, match=val_id):
        check_no_leakage({"SD1": leaky}, tiny_cohort)


# --- synthetic sets as inputs ---------------------------------------------------------------


def test_resolve_local_folder_and_checks(
    tiny_cohort: PreparedCohort, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = fake_set("FM", 3, cohort_hash=tiny_cohort.content_hash).save(tmp_path / "fm")
    loaded = resolve_synthetic("FM", str(folder))
    assert loaded.data.class_counts() == dict.fromkeys(CLASSES, 3)
    assert len(loaded.sha256) == 64
    assert loaded.describe()["ref"] == str(folder)
    check_compatible(loaded, tiny_cohort)
    with pytest.raises(ScenarioError, match="holds method 'FM'"):
        resolve_synthetic("SD2", str(folder))
    with pytest.raises(ScenarioError, match="no such folder"):
        resolve_synthetic("FM", str(tmp_path / "missing"))

    other = resolve_synthetic("FM", str(fake_set("FM", 1, cohort_hash="x").save(tmp_path / "x")))
    with pytest.raises(ScenarioError, match=r"trained on cohort x, but this cohort is \w+"):
        check_compatible(other, tiny_cohort)
    with caplog.at_level(logging.WARNING):
        check_compatible(other, tiny_cohort, allow_other_cohort=True)
    assert "trained on cohort x" in caplog.text
    small = resolve_synthetic("FM", str(fake_set("FM", 1, size=16).save(tmp_path / "small")))
    with pytest.raises(ScenarioError, match="has images"):
        check_compatible(small, tiny_cohort)
    # a 16 px set serves a classifier that trains at 16 px (the 32 px cohort is downsampled) ...
    check_compatible(small, tiny_cohort, train_size=16)
    # ... but never one that would need the set upsampled
    with pytest.raises(ScenarioError, match="training needs 1x24x24"):
        check_compatible(small, tiny_cohort, train_size=24)


def test_resolve_from_an_mlflow_run(local_store: Path, tmp_path: Path) -> None:
    import mlflow

    from thyroaug.tracking.setup import configure_tracking

    folder = fake_set("FM", 2).save(tmp_path / "FM")
    configure_tracking(experiment="t")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="synthetic/FM")
    run_id = run.info.run_id
    assert run.info.artifact_uri.startswith(local_store.as_uri())
    by_uri = resolve_synthetic("FM", f"runs:/{run_id}/synthetic/FM", tmp_path / "dl1")
    by_id = resolve_synthetic("FM", run_id, tmp_path / "dl2")
    assert by_uri.sha256 == by_id.sha256 == resolve_synthetic("FM", str(folder)).sha256
    assert torch.equal(by_uri.data.images, by_id.data.images)
    with pytest.raises(ScenarioError, match="could not be downloaded"):
        resolve_synthetic("FM", f"runs:/{run_id}/synthetic/SD1", tmp_path / "dl3")
