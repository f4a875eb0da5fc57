"""Table 3 from synthesize runs: metric names, the long frame, the layout and the notes."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from thyroaug.contract import CLASSES
from thyroaug.evaluation.table3 import (
    GROUPS,
    LONG_COLUMNS,
    QUANTITIES,
    count_key,
    dim_key,
    fidelity_long,
    kid_label,
    metric_key,
    parse_metric_key,
    table3,
    table3_markdown,
    table3_notes,
)

EXT = "resnet18-O"


def run_metrics(fid: float, kid: float, *, n_fake: int = 80, extractor: str = EXT) -> dict:
    """A synthesize run's metrics as the job logs them now (every quantity, every group)."""
    out = {dim_key(extractor): 512.0}
    for group in GROUPS:
        n = n_fake * (4 if group == "overall" else 1)
        out[count_key("real", group)] = 200.0 if group != "overall" else 700.0
        out[count_key("fake", group)] = float(n)
        values = {
            "fid": fid,
            "fid_low": fid - 0.5,
            "fid_high": fid + 0.5,
            "kid": kid,
            "kid_std": kid / 10,
            "kid_low": kid * 0.9,
            "kid_high": kid * 1.1,
            "precision": 0.7,
            "recall": 0.6,
            "density": 0.9,
            "coverage": 0.5,
            "n_below_dim": float(n < 512),
        }
        out.update({metric_key(q, extractor, group): v for q, v in values.items()})
    return out


def legacy_metrics(fid: float, kid: float) -> dict:
    """A synthesize run logged before the intervals: FID, KID, KID std and per-class counts."""
    out = {}
    for group in GROUPS:
        out[f"fid_{EXT}_{group}"], out[f"kid_{EXT}_{group}"] = fid, kid
        out[f"kid_std_{EXT}_{group}"] = kid / 10
        if group != "overall":
            out[f"n_real_{group}"], out[f"n_fake_{group}"] = 200.0, 80.0
    return out


# ------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("quantity", QUANTITIES)
@pytest.mark.parametrize("group", GROUPS)
def test_every_metric_name_parses_back(quantity, group):
    assert parse_metric_key(metric_key(quantity, "resnet18-random", group)) == (
        quantity,
        "resnet18-random",
        group,
    )


def test_historical_names_keep_their_spelling_and_others_are_not_fidelity():
    assert metric_key("fid", EXT, "DG") == "fid_resnet18-O_DG"
    assert metric_key("kid_std", EXT, "overall") == "kid_std_resnet18-O_overall"
    # the interval is a suffix: a reader of fid_<ext>_<group> never sees an extractor 'ci'
    assert metric_key("fid_low", EXT, "TI") == "fid_resnet18-O_TI_ci_low"
    for other in ("n_real_DG", "feature_dim_inception", "memorisation_flagged", "fid_x_y"):
        assert parse_metric_key(other) is None
    with pytest.raises(ValueError, match="quantity"):
        metric_key("fidelity", EXT, "DG")
    with pytest.raises(ValueError, match="without '_'"):
        metric_key("fid", "my_net", "DG")


# ------------------------------------------------------------------------------- long frame
def test_long_frame_of_new_and_old_runs():
    long = fidelity_long({"FM": run_metrics(1.0, 0.002), "SD1": legacy_metrics(4.0, 0.005)})
    assert list(long.columns) == list(LONG_COLUMNS)
    assert len(long) == 2 * len(GROUPS)
    fm = long[(long["method"] == "FM") & (long["group"] == "overall")].iloc[0]
    assert (fm["n_real"], fm["n_fake"], fm["dim"], fm["fid_high"]) == (700, 320, 512, 1.5)
    sd1 = long[long["method"] == "SD1"].set_index("group")
    assert sd1["fid_low"].isna().all() and sd1["precision"].isna().all()
    assert sd1.loc["DG", "dim"] == 512  # the resnet18 family's known dimension
    assert sd1.loc["DG", "n_below_dim"] == 1.0  # derived: 80 < 512
    assert math.isnan(sd1.loc["overall", "n_fake"])  # old runs logged no overall count
    assert fidelity_long({"FM": {"train_seconds": 1.0}}).empty


def test_table3_layout_scales_kid_and_keeps_old_runs_as_nan():
    long = fidelity_long({"FM": run_metrics(1.0, 0.002), "SD1": legacy_metrics(4.0, 0.005)})
    t3 = table3(long)
    assert list(t3.index) == [*CLASSES, "overall"] and t3.index.name == "Class"
    assert t3.columns.names == ["extractor", "method", "metric"]
    fm = t3[EXT]["FM"]
    assert fm.loc["DG", "KID x10^3"] == pytest.approx(2.0)
    assert fm.loc["DG", "KID x10^3 low"] == pytest.approx(1.8)
    assert fm.loc["overall", "n fake"] == 320 and fm.loc["NL", "coverage"] == 0.5
    assert t3[EXT]["SD1"]["FID high"].isna().all()
    raw = table3(long, kid_scale=1)
    assert raw[EXT]["FM"].loc["DG", "KID"] == pytest.approx(0.002)
    assert table3(fidelity_long({})) is None
    assert kid_label(1e3) == "KID x10^3" and kid_label(1) == "KID"


def test_markdown_names_extractor_dimension_scale_and_na():
    long = fidelity_long({"FM": run_metrics(1.0, 0.002), "SD1": legacy_metrics(4.0, 0.005)})
    text = table3_markdown(long)
    assert text.startswith(f"**{EXT}** (512-d features; KID x10^3)")
    assert "1.00 [0.50, 1.50]" in text and "2.00 [1.80, 2.20]" in text
    assert "0.70 / 0.60 / 0.90 / 0.50" in text and "n/a" in text
    assert "| overall |" in text
    assert table3_markdown(fidelity_long({})).startswith("No synthesize run")


# ------------------------------------------------------------------------------------ notes
def test_notes_on_constructed_runs():
    synth = {
        "FM": run_metrics(1.0, 0.004),  # best FID, worst KID
        "SD1": run_metrics(3.0, 0.001),
        "SD2": run_metrics(3.2, 0.002),  # FID interval overlaps SD1's
        "SD3": legacy_metrics(5.0, 0.003),
    }
    notes = table3_notes(fidelity_long(synth))
    text = "\n".join(notes)
    assert "n below the feature dimension (resnet18-O: 512-d)" in text
    assert "80 generated with 200 real images per class" in text and "Chong & Forsyth" in text
    assert "KID is shown x10^3" in text and "raw unbiased MMD^2" in text
    assert (
        "FID and KID rank the methods differently (resnet18-O, overall, best first): "
        "FID FM < SD1 < SD2 < SD3; KID SD1 < SD2 < SD3 < FM." in notes
    )
    assert "FID SD1 and SD2" in text
    assert "not comparable with the paper's Inception numbers" in text
    assert "n/a: no bootstrap intervals" in text and "for SD3" in text


def test_notes_stay_quiet_when_there_is_nothing_to_say():
    synth = {
        "FM": run_metrics(1.0, 0.001, n_fake=600, extractor="inception"),
        "SD1": run_metrics(3.0, 0.002, n_fake=600, extractor="inception"),
    }
    for m in synth.values():  # enough real images too, and a 2048-d extractor
        m.update({k: 5000.0 for k in m if k.startswith("n_real_")})
        m.update({k: 0.0 for k in m if k.startswith("n_below_dim_")})
    notes = table3_notes(fidelity_long(synth))
    assert len(notes) == 1 and notes[0].startswith("KID is shown")
    assert table3_notes(pd.DataFrame(columns=list(LONG_COLUMNS))) == []


def test_random_extractor_note_says_what_it_compares():
    notes = table3_notes(
        fidelity_long({"FM": run_metrics(1.0, 0.001, extractor="resnet18-random")})
    )
    assert any("fixed-seed untrained ResNet18" in n for n in notes)
