"""ResNet18 variant, training loop and the train_classifier job (thyroaug.classifier)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.model import WEIGHTS_ENV, build_resnet18
from thyroaug.classifier.train import fit, predict_proba
from thyroaug.config import resolve
from thyroaug.contract import CLASSES
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ConfigError, ScenarioError
from thyroaug.jobs.train_classifier import scenario_data as prepare_scenario_data
from thyroaug.jobs.train_classifier import train_and_evaluate

TIMING = {"epoch_time_s", "train_images_per_s", "eval_time_s"}


@pytest.fixture(autouse=True)
def _no_local_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("THYROAUG_WEIGHTS_DIR", raising=False)


@pytest.fixture
def local_store(tracking_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tracking_home`` whose artifacts also stay under it.

    ``mlflow.set_tracking_uri`` (called by ``tracking_home``) exports MLFLOW_TRACKING_URI, which
    ``configure_tracking`` treats as an explicit store without an artifact location, so MLflow
    would default artifacts to ./mlruns in the working directory.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tracking_home


# --- model ----------------------------------------------------------------------------------


def test_resnet18_variant_shapes_conv1_and_head(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        model, pretrained = build_resnet18()
    assert not pretrained and "random initialisation" in caplog.text
    conv1 = model.conv1
    assert (conv1.in_channels, conv1.out_channels) == (1, 64)
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    head = model.fc
    assert isinstance(head[0], nn.Dropout) and head[0].p == 0.2
    assert isinstance(head[1], nn.Linear) and (head[1].in_features, head[1].out_features) == (
        512,
        len(CLASSES),
    )
    model.eval()
    for size in (32, 64):
        assert model(torch.rand(2, 1, size, size)).shape == (2, len(CLASSES))
    feats = nn.Sequential(*list(model.children())[:-2])(torch.rand(1, 1, 128, 128))
    assert feats.shape[-2:] == (8, 8)  # 128 px -> 8x8 at stage 4 (stride-1 conv1 + max-pool)
    no_pool, _ = build_resnet18(init="random", keep_maxpool=False, dropout=0.5)
    assert isinstance(no_pool.maxpool, nn.Identity) and no_pool.fc[0].p == 0.5


def test_imagenet_weights_centre_crop_summed_over_rgb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(reference.state_dict(), path)
    monkeypatch.setenv("THYROAUG_WEIGHTS_DIR", str(tmp_path))
    model, pretrained = build_resnet18()
    assert pretrained
    w7 = reference.conv1.weight.detach()
    assert torch.allclose(model.conv1.weight, w7[:, :, 2:5, 2:5].sum(1, keepdim=True))
    assert torch.equal(model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    # summed weights on gray == the RGB centre-crop conv on the gray image repeated 3 times
    gray = torch.rand(2, 1, 16, 16)
    rgb_out = F.conv2d(gray.repeat(1, 3, 1, 1), w7[:, :, 2:5, 2:5], padding=1)
    assert torch.allclose(model.conv1(gray), rgb_out, atol=1e-5)
    _, not_used = build_resnet18(init="random")
    assert not not_used

    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "bad.pth"))
    torch.save({"nonsense": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="not a torchvision ResNet18"):
        build_resnet18()


def test_config_profiles_and_validation() -> None:
    paper = resolve(ClassifierConfig, "paper")
    assert (paper.lr, paper.weight_decay, paper.epochs, paper.image_size) == (1e-4, 1e-5, 300, 128)
    assert (paper.lr_factor, paper.lr_patience, paper.min_lr) == (0.8, 10, 2e-5)
    assert (paper.dropout, paper.per_class_synthetic, paper.bootstrap) == (0.2, 1000, 1000)
    quick = resolve(ClassifierConfig, "quick")
    assert quick.image_size == 32 and quick.epochs < 20 and quick.profile == "quick"
    smoke = resolve(ClassifierConfig, "smoke", epochs="1")
    assert smoke.image_size == 32 and smoke.epochs == 1 and smoke.bootstrap == 50
    with pytest.raises(ConfigError):
        resolve(ClassifierConfig, "smoke", init="imagenet21k")
    with pytest.raises(ConfigError):
        resolve(ClassifierConfig, "smoke", epochs=0)
    with pytest.raises(ConfigError):
        resolve(ClassifierConfig, "smoke", learning_rate=1e-3)


def test_resize_once_antialiased(tiny_cohort: PreparedCohort) -> None:
    small = tiny_cohort.resized(16)
    assert small.images.shape[-2:] == (16, 16) and small.masks.shape[-2:] == (16, 16)
    assert set(small.masks.unique().tolist()) <= {0, 1}
    expected = F.interpolate(tiny_cohort.images, size=16, mode="bilinear", antialias=True)
    assert torch.allclose(small.images, expected.clamp(0, 1), atol=1e-6)
    assert tiny_cohort.resized(tiny_cohort.size) is tiny_cohort


def test_scenario_data_never_upsamples(tiny_cohort: PreparedCohort) -> None:
    cfg = resolve(ClassifierConfig, "smoke", image_size=64)
    data = prepare_scenario_data(tiny_cohort, "O", cfg, progress=False)
    assert data.input_size == tiny_cohort.size < 64


# --- training -------------------------------------------------------------------------------


def test_same_seed_gives_identical_metrics(tiny_cohort: PreparedCohort, tmp_path: Path) -> None:
    cfg = resolve(ClassifierConfig, "smoke", per_class_synthetic=4)
    data = prepare_scenario_data(tiny_cohort, "O+CA", cfg, progress=False)

    def run(seed: int, ckpt: Path | None = None) -> tuple[list[dict], np.ndarray, object]:
        c = resolve(ClassifierConfig, "smoke", seed=seed)
        res = fit(
            data.train.images,
            data.train.labels,
            data.val.images,
            data.val.labels,
            c,
            checkpoint_path=ckpt,
            progress=False,
        )
        hist = [{k: v for k, v in h.items() if k not in TIMING} for h in res.history]
        return hist, predict_proba(res.model, data.external.images), res

    h1, p1, res = run(0, tmp_path / "best.pt")
    h2, p2, _ = run(0)
    h3, _, _ = run(1)
    assert len(h1) == cfg.epochs
    assert h1 == h2
    assert np.array_equal(p1, p2)
    assert h1 != h3
    assert p1.shape == (len(data.external), len(CLASSES))
    assert np.allclose(p1.sum(1), 1, atol=1e-5)
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["epoch"] == res.best_epoch
    assert saved["val_loss"] == min(h["val_loss"] for h in h1)
    for key, value in res.model.state_dict().items():
        assert torch.equal(saved["state_dict"][key], value)


def test_fm_without_a_set_is_a_scenario_error(tiny_cohort: PreparedCohort) -> None:
    cfg = resolve(ClassifierConfig, "smoke")
    with pytest.raises(ScenarioError) as err:
        train_and_evaluate(tiny_cohort, "O+FM", cfg, tracking=False, progress=False)
    message = str(err.value)
    assert "FM" in message and "only O and CA scenarios" in message
    assert "mlflow run . -e synthesize -P generator=models:/thyroaug-fm@champion" in message


def test_cli_fm_without_champion_names_the_train_command(
    local_store: Path, tiny_cohort: PreparedCohort, capsys: pytest.CaptureFixture[str]
) -> None:
    from thyroaug.cli import main

    tiny_cohort.save(local_store / "outputs" / "cohort")
    code = main(["train-classifier", "--scenario", "FM+O", "--profile", "smoke", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no thyroaug-fm@champion is registered" in err
    assert "`mlflow run . -e train_fm -P profile=smoke`" in err


# --- the MLflow run -------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_smoke_run_logged_to_mlflow(local_store: Path, tiny_cohort: PreparedCohort) -> None:
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    from thyroaug.cli import main

    tiny_cohort.save(local_store / "outputs" / "cohort")  # the default cohort location
    best = local_store / "best_params.json"  # as `thyroaug tune` writes it
    best.write_text('{"params": {"lr": 0.0003, "dropout": 0.1}, "value": 1.0}')
    code = main(
        ["train-classifier", "--scenario", "CA+O", "--profile", "smoke", "--study-id", "s1",
         "--seed", "3", "--params-from", str(best), "--lr", "0.0002", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    client = MlflowClient()
    runs = client.search_runs(
        [client.get_experiment_by_name("thyroaug").experiment_id],
        "tags.step = 'train_classifier'",
    )
    assert len(runs) == 1
    run = runs[0]
    run_id = run.info.run_id
    assert run.info.artifact_uri.startswith(local_store.as_uri())  # nothing lands in the cwd
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["scenario"] == "O+CA" and tags["profile"] == "smoke"
    assert tags["study_id"] == "s1" and tags["cohort_hash"] == tiny_cohort.content_hash
    assert params["scenario"] == "O+CA" and params["seed"] == "3"
    assert params["lr"] == "0.0002" and params["dropout"] == "0.1"  # flags beat --params-from
    assert tags["params_from"] == str(best)
    assert tags["sanity.flags"] and tags["sanity.one_class_predictor"] in ("true", "false")
    assert 0 < metrics["external_top_class_share"] <= 1
    assert params["cohort_hash"] == tiny_cohort.content_hash
    assert params["pretrained"] == "false" and params["input_size"] == "32"
    assert params["train_count_CA"] == str(4 * 8)
    assert "generated" in params["synthetic_CA"]
    for name in (
        "external_accuracy",
        "external_f1_macro",
        "external_auc_micro",
        "external_precision_DG",
        "external_recall_weighted",
        "best_val_f1_macro",
        "best_val_loss",
        "best_epoch",
        "bootstrap_accuracy_mean",
        "bootstrap_auc_macro_upper",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "lr",
        "train_images_per_s",
    ):
        assert name in metrics, name
    history = client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2]

    def listing(path: str = "") -> set[str]:
        out = set()
        for item in client.list_artifacts(run_id, path):
            out |= listing(item.path) if item.is_dir else {item.path}
        return out

    files = listing()
    for expected in (
        "bootstrap/bootstrap.csv",
        "bootstrap/summary.csv",
        "plots/confusion.png",
        "plots/roc.png",
        "plots/bootstrap.png",
        "gradcam/gradcam.png",
        "gradcam/cams.npz",
        "predictions/predictions.csv",
        "metrics/metrics_table.csv",
        "metrics/metrics.json",
        "config/classifier_config.json",
        "inputs/training_set_counts.csv",
    ):
        assert expected in files, expected
    boot = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=
                       "bootstrap/bootstrap.csv"))  # fmt: skip
    assert len(boot) == 50 and {"accuracy", "f1_macro", "auc_macro"} <= set(boot.columns)
    preds = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=
                        "predictions/predictions.csv"))  # fmt: skip
    assert "patient_id" not in preds.columns
    ext = preds[preds["split"] == "external"]
    assert len(ext) == int((tiny_cohort.table["split"] == "external").sum())
    assert np.isclose((ext["true"] == ext["pred"]).mean(), metrics["external_accuracy"])

    model = mlflow.pytorch.load_model(f"runs:/{run_id}/classifier-O-CA")
    out = model(torch.rand(3, 1, 32, 32))
    assert tuple(out.shape) == (3, len(CLASSES))


@pytest.mark.slow
def test_synthetic_set_logged_in_a_validation_only_run(
    local_store: Path, tiny_cohort: PreparedCohort, tmp_path: Path
) -> None:
    """The set used is logged exactly; a search trial sees validation numbers only."""
    import mlflow
    from mlflow import MlflowClient
    from test_scenarios import fake_set

    from thyroaug.tracking.setup import configure_tracking

    folder = fake_set("FM", 5, cohort_hash=tiny_cohort.content_hash).save(tmp_path / "FM")
    configure_tracking()
    seen: list[tuple[int, float]] = []
    cfg = resolve(ClassifierConfig, "smoke", epochs=1)
    out = train_and_evaluate(
        tiny_cohort,
        "FM+O",
        cfg,
        {"FM": str(folder)},
        tmp_path / "trial",
        evaluate_external=False,
        log_model=False,
        tags={"step": "tune_trial", "trial": "0"},
        on_epoch=lambda epoch, m: seen.append((epoch, m["val_loss"])),
        progress=False,
    )
    run = MlflowClient().get_run(out["run_id"])
    params = run.data.params
    assert params["synthetic_FM"] == str(folder)
    assert len(params["synthetic_FM_sha256"]) == 64
    assert params["train_count_FM"] == "20"  # 5 per class available, 8 asked for
    assert run.data.tags["scenario"] == "O+FM"
    info = mlflow.artifacts.load_dict(f"runs:/{out['run_id']}/inputs/synthetic_FM.json")
    assert info["ref"] == str(folder) and info["class_counts"] == dict.fromkeys(CLASSES, 5)
    assert info["info"]["cohort_hash"] == tiny_cohort.content_hash

    assert seen == [(1, out["best_val_loss"])]
    assert run.data.tags["step"] == "tune_trial"  # kept out of `thyroaug compare`
    assert "best_val_f1_macro" in run.data.metrics
    assert not [k for k in run.data.metrics if k.startswith(("external_", "bootstrap_"))]
    preds = pd.read_csv(tmp_path / "trial" / "predictions" / "predictions.csv")
    assert set(preds["split"]) == {"val"}
