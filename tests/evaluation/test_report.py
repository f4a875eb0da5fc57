"""The report's layouts: Table 2 with CIs, Table 3 from run metrics, the HTML page."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thyroaug.contract import CLASSES
from thyroaug.evaluation.bootstrap import bootstrap, summarize
from thyroaug.evaluation.findings import (
    Contrasts,
    Evidence,
    Findings,
    StudyFacts,
    claims_table,
    sanity_flags,
)
from thyroaug.evaluation.metrics import compute_metrics
from thyroaug.evaluation.paper_method import PAPER_METHOD_NAME
from thyroaug.evaluation.report import Cell, ReportInputs, html_report
from thyroaug.evaluation.table2 import format_ci, table2_ci
from thyroaug.evaluation.table3 import fidelity_long, table3, table3_markdown

CI = re.compile(r"^\d\.\d{3} \[\d\.\d{2}, \d\.\d{2}\]$")


def _fidelity_metrics(fid: float) -> dict[str, float]:
    out = {"n_real_DG": 200.0, "fid_resnet18-O_bogus": 1.0, "train_seconds": 3.0}
    for group in (*CLASSES, "overall"):
        out[f"fid_resnet18-O_{group}"] = fid
        out[f"kid_resnet18-O_{group}"] = fid / 100
        out[f"kid_std_resnet18-O_{group}"] = fid / 1000
    out["fid_inception_overall"] = 10 * fid
    out["kid_inception_overall"] = fid / 10
    out["kid_std_inception_overall"] = fid / 50
    return out


def test_format_ci() -> None:
    assert format_ci(0.78234, 0.7012, 0.8549) == "0.782 [0.70, 0.85]"
    assert format_ci(math.nan, 0.1, 0.2) == "NA"
    assert format_ci(0.5, math.nan, 0.6) == "0.500 [no CI]"
    assert format_ci(0.0001, -0.004, 0.02) == "0.000 [0.00, 0.02]"  # no "-0.00"
    assert format_ci(-0.02, -0.05, 0.01) == "-0.020 [-0.05, 0.01]"


def test_table2_ci_every_number_has_an_interval() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 80)
    p = rng.dirichlet(np.ones(4), 80)
    p[np.arange(80), y] += 1.0
    p /= p.sum(1, keepdims=True)
    points = {"O": compute_metrics(y, p), "CA": compute_metrics(y, p[::-1])}
    intervals = {"O": summarize(bootstrap(y, p, n_resamples=200, metrics="all")), "CA": None}
    formatted, long = table2_ci(points, intervals)
    assert list(formatted.index) == ["O", "CA"]
    assert formatted.columns[0] == "Accuracy" and len(formatted.columns) == 25
    assert all(CI.match(v) for v in formatted.loc["O"]), formatted.loc["O"].tolist()
    assert all(v.endswith("[no CI]") for v in formatted.loc["CA"])
    assert list(long.columns) == [
        "scenario",
        "column",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "level",
    ]
    o = long[long["scenario"] == "O"]
    assert (o["ci_low"] <= o["value"] + 1e-12).all() and (o["value"] <= o["ci_high"] + 1e-12).all()


def test_fidelity_long_kid_std_is_a_column_not_an_extractor() -> None:
    long = fidelity_long({"FM": _fidelity_metrics(1.0), "SD1": _fidelity_metrics(4.0)})
    assert set(long["extractor"]) == {"resnet18-O", "inception"}
    assert not long["extractor"].str.startswith("std_").any()
    row = long.query("method == 'SD1' and extractor == 'resnet18-O' and group == 'TI'").iloc[0]
    assert (row["fid"], row["kid"], row["kid_std"]) == pytest.approx((4.0, 0.04, 0.004))
    assert fidelity_long({"FM": {"train_seconds": 1.0}}).empty


def test_table3_one_layout_with_kid_std() -> None:
    long = fidelity_long({"FM": _fidelity_metrics(1.0), "SD1": _fidelity_metrics(4.0)})
    t3 = table3(long, kid_scale=1)
    assert t3 is not None and list(t3.index) == [*CLASSES, "overall"]
    assert t3.columns.names == ["extractor", "method", "metric"]
    res = t3["resnet18-O"]
    assert res[("SD1", "KID std")].tolist() == pytest.approx([0.004] * 5)
    assert res[("FM", "FID")].tolist() == pytest.approx([1.0] * 5)
    assert t3["inception"]["FM"]["FID"].loc[["DG", "NG", "NL", "TI"]].isna().all()
    assert t3["inception"]["FM"].loc["overall", "FID"] == pytest.approx(10.0)
    md = table3_markdown(long)
    assert "**resnet18-O**" in md and "**inception**" in md and "std_" not in md


def _findings(one_class: bool) -> Findings:
    y = np.array([0, 1, 2, 3] * 5)
    good = np.eye(4)[y] * 0.7 + 0.075
    bad = np.tile([0.1, 0.1, 0.1, 0.7], (20, 1))
    probas = {"O": good, "FM": bad if one_class else good}
    sanity = sanity_flags(y, probas, {}, {"O": (20, 20), "FM": (8, 0)})
    claims = claims_table(Evidence({}, Contrasts(), None))
    empty = pd.DataFrame(columns=["contrast", "metric"])
    return Findings(claims, empty, sanity, None, pd.DataFrame(), None, False)


def test_html_report_opens_with_the_findings_and_lists_gaps(tmp_path: Path) -> None:
    facts = StudyFacts("s1", "quick", "phantom", "scale 0.25", 575, 63, 101, ("0",), 0.174)
    page = html_report(
        ReportInputs(
            study_id="s1",
            compared=["O", "FM"],
            facts=facts,
            findings=_findings(one_class=True),
            table2={
                "O": {"precision_TI": Cell(0.9, 0.8, 1.0), "accuracy": Cell(0.7, 0.6, 0.8)},
                "FM": {"precision_TI": Cell(0.3, 0.2, 0.4), "precision_DG": Cell(0.0)},
            },
            expected_source="the study's scenario list",
            missing=["O+FM+CA"],
            not_tested={"CA": "no predictions"},
            deviations={"classifier_init": "ResNet18 from random init, not ImageNet"},
            paper_long=pd.DataFrame({"a": ["O"], "b": ["CA"]}),
            paper_resamples=(1000, 1000),
        )
    )
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings[0] == "Findings" and headings.index("Findings") < next(
        i for i, h in enumerate(headings) if h.startswith("Table 2")
    )
    assert page.index("Findings") < page.index("Deviations from the paper")
    assert "<b>phantom cohort</b>" in page and "clinical numbers are not expected" in page
    assert "17.4 points" in page and "80 % power" in page
    assert "id='claims'" in page and page.count("not run") >= 10  # no evidence given
    assert "one-class predictor (TI for 20/20)" in page  # the flag, in the findings
    assert "docs/deviations.md" in page
    assert "CA: not tested (no predictions)" in page
    assert "O+FM+CA" in page and "the study&#x27;s scenario list" in page
    assert f"{PAPER_METHOD_NAME} (B = 1000 resamples)" in page
    assert "shrink as the number of resamples grows" in page
    # FM never predicts DG: its DG precision is undefined, shown n/a (not 0.000); O is best
    assert "title='class never predicted: precision undefined'>n/a</td>" in page
    assert "<span class='best'>0.900 [0.80, 1.00]</span>" in page
    assert "paper 0.96" in page  # O's TI precision in the paper's Table 2


def test_html_report_shows_each_methods_grids_under_its_name(tmp_path: Path) -> None:
    grids = {}
    for method, shade in (("SD1", 40), ("FM", 200)):
        for cls in CLASSES:
            path = tmp_path / method / f"grid_{cls}.png"
            path.parent.mkdir(exist_ok=True)
            from PIL import Image

            Image.new("L", (8, 8), shade + CLASSES.index(cls)).save(path)
            grids.setdefault(method, {})[cls] = path
    page = html_report(ReportInputs(study_id="s", compared=["O"], grids=grids))
    figures = re.findall(r"<figure data-method='(\w+)' data-class='(\w+)'>", page)
    assert figures == [(m, c) for m in ("SD1", "FM") for c in CLASSES]
    assert "<figcaption>FM TI</figcaption>" in page
