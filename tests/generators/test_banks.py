"""Condition banks stay with the training run: written private, checked on read, optional."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
import torch

from thyroaug.errors import GeneratorError
from thyroaug.generators.banks import (
    BANK_FILE,
    bank_config,
    fetch_bank,
    log_bank,
    read_bank,
    reveal,
    write_bank,
)
from thyroaug.generators.flow_matching.bank import MaskBank
from thyroaug.generators.flow_matching.pyfunc import fm_card


def _bank() -> MaskBank:
    masks = (torch.arange(6 * 8 * 8).reshape(6, 1, 8, 8) % 3 == 0).to(torch.uint8)
    return MaskBank(masks, torch.tensor([0, 1, 2, 3, 0, 1]), [f"case-{i}" for i in range(6)])


def test_round_trip_is_private_and_checked(tmp_path: Path) -> None:
    folder = write_bank(_bank(), tmp_path / "bank", family="fm", cohort_hash="abc")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    back = read_bank(folder, MaskBank.load, family="fm", cohort_hash="abc")
    assert torch.equal(back.masks, _bank().masks) and back.case_ids == _bank().case_ids
    with pytest.raises(GeneratorError, match=r"cohort 'abc'.*trained on 'xyz'"):
        read_bank(folder, MaskBank.load, family="fm", cohort_hash="xyz")
    with pytest.raises(GeneratorError, match="'fm' bank"):
        read_bank(folder, MaskBank.load, family="sd")
    (folder / "masks.csv").write_text("case_id,label\nsomeone-else,DG\n")
    with pytest.raises(
        GeneratorError,
        match=r"masks\.csv \(a file of a .fm. condition bank\) is damaged: its bytes do not match",
    ):
        read_bank(folder, MaskBank.load, family="fm")
    with pytest.raises(GeneratorError, match="not a readable condition bank"):
        read_bank(tmp_path, MaskBank.load, family="fm")


def test_fetch_is_optional_and_says_why(tmp_path: Path, caplog, tracking_home, monkeypatch) -> None:
    import tempfile

    import mlflow

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    assert fetch_bank("none", MaskBank.load, family="fm") is None
    folder = write_bank(_bank(), tmp_path / "bank", family="fm", cohort_hash="abc")
    assert len(fetch_bank(str(folder), MaskBank.load, family="fm")) == 6
    with mlflow.start_run() as run:
        uri = log_bank(folder)
    assert uri == f"runs:/{run.info.run_id}/condition_bank"
    got = fetch_bank(uri, MaskBank.load, family="fm", cohort_hash="abc")
    assert got is not None and got.case_ids == _bank().case_ids
    with caplog.at_level(logging.WARNING):
        assert fetch_bank(uri, MaskBank.load, family="fm", cohort_hash="other") is None
        assert (
            fetch_bank("runs:/0123456789abcdef/condition_bank", MaskBank.load, family="fm") is None
        )
    assert caplog.text.count("not loaded") == 2 and "Traceback" not in caplog.text
    assert not list(scratch.glob("thyroaug-bank-*"))  # downloads removed after reading


def test_model_config_and_cards_name_where_the_bank_is() -> None:
    config = bank_config("runs:/r/condition_bank", "abc")
    assert config == {
        "condition_bank": "runs:/r/condition_bank",
        "cohort_hash": "abc",
        "reveal_sources": False,
    }
    assert not reveal(config) and reveal({"reveal_sources": "true"}) and not reveal(None)
    cfg = {"conditioning": "class+mask", "profile": "smoke", "image_size": 32}
    info = {"content_hash": "abc", "train_masks": 6}
    assert "WARNING" not in fm_card(cfg, info) and "not in this model" in fm_card(cfg, info)
    loud = fm_card(cfg, info, embedded=True)
    assert loud.splitlines()[2].startswith("**WARNING - THIS REGISTERED MODEL CONTAINS PATIENT")
    assert "6 training case(s)" in loud and BANK_FILE not in loud
