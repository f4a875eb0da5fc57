"""The study report: Table 2 with confidence intervals, Table 3, the HTML page.

Pure functions over tables, plain dicts and files; the compare job (``thyroaug.jobs.compare``)
queries MLflow, runs the analysis (``thyroaug.evaluation.comparison``) and calls these to lay the
results out.

- ``format_ci`` / ``table2_ci``: every Table 2 number as ``0.782 [0.70, 0.85]`` (point estimate on
  all external cases, 95 % percentile bootstrap interval over external cases).
- ``format_mean_sd`` / ``seed_table``: with several training seeds, every Table 2 number as
  ``0.782 ± 0.015 [0.70, 0.85]`` (mean ± sd over seeds, mean per-seed case interval).
- ``fidelity_long`` / ``table3_from_long``: synthesis-run metrics ``fid_<extractor>_<group>``,
  ``kid_<extractor>_<group>`` and ``kid_std_<extractor>_<group>`` -> the long frame of
  ``fidelity.fidelity_by_mode`` -> the paper's Table 3 layout of ``fidelity.table3`` (one layout),
  with the KID std beside the KID of the same extractor.
- ``html_report``: the self-contained page (``ReportInputs`` in), opening with the deviations
  (``thyroaug.evaluation.deviations``).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thyroaug.contract import CLASSES
from thyroaug.evaluation import metrics as M
from thyroaug.evaluation.paper_method import PAPER_METHOD_NAME, PAPER_METHOD_WHY

GROUPS: tuple[str, ...] = (*CLASSES, "overall")
FIDELITY_COLUMNS: tuple[str, ...] = ("mode", "extractor", "group", "fid", "kid", "kid_std")
"""Columns of the long fidelity frame (as ``fidelity.TABLE3_COLUMNS``)."""


# --------------------------------------------------------------------------------------------
# Table 2 with confidence intervals
# --------------------------------------------------------------------------------------------
def format_ci(value: float, low: float, high: float, digits: int = 3, ci_digits: int = 2) -> str:
    """``0.782 [0.70, 0.85]``; ``NA`` for a NaN value, ``0.782 [no CI]`` for a NaN interval."""
    if value is None or not np.isfinite(value):
        return "NA"
    point = f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.00"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{point} [no CI]"
    lo, hi = round(low, ci_digits) + 0.0, round(high, ci_digits) + 0.0
    return f"{point} [{lo:.{ci_digits}f}, {hi:.{ci_digits}f}]"


def table2_keys(classes: Sequence[str] = CLASSES) -> list[tuple[str, str]]:
    """(column label, metric key) of the CI table: accuracy, then Table 2's 24 columns."""
    return [("Accuracy", "accuracy")] + [
        (f"{g} {i}", key) for g, i, key in M.table2_columns(classes)
    ]


def table2_ci(
    points: Mapping[str, Mapping[str, float]],
    intervals: Mapping[str, pd.DataFrame | None],
    level: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 with a confidence interval on every number.

    Args:
        points: {scenario: ``compute_metrics`` dict on all external cases}.
        intervals: {scenario: ``bootstrap.summarize`` frame (index metric, columns lower / upper)
            or None}; metrics without a row get ``[no CI]``.
        level: the intervals' coverage (for the long frame).

    Returns:
        (formatted, long): ``formatted`` has one row per scenario and string cells
        ``0.782 [0.70, 0.85]`` for accuracy and Table 2's columns; ``long`` has one row per
        (scenario, metric) with ``scenario, column, metric, value, ci_low, ci_high, level``.
    """
    keys = table2_keys()
    cells: dict[str, dict[str, str]] = {}
    rows = []
    for scenario, metrics in points.items():
        summary = intervals.get(scenario)
        cells[scenario] = {}
        for label, key in keys:
            value = float(metrics.get(key, math.nan))
            low = high = math.nan
            if summary is not None and key in summary.index:
                low, high = float(summary.loc[key, "lower"]), float(summary.loc[key, "upper"])
            cells[scenario][label] = format_ci(value, low, high)
            rows.append(
                {
                    "scenario": scenario,
                    "column": label,
                    "metric": key,
                    "value": value,
                    "ci_low": low,
                    "ci_high": high,
                    "level": level,
                }
            )
    formatted = pd.DataFrame.from_dict(cells, orient="index")
    formatted = formatted.reindex(columns=[label for label, _ in keys])
    formatted.index.name = "Method"
    return formatted, pd.DataFrame(rows)


def format_mean_sd(mean: float, sd: float, low: float, high: float, digits: int = 3) -> str:
    """``0.782 ± 0.015 [0.70, 0.85]``; ``± NA`` for one seed, ``NA`` for a NaN mean."""
    cell = format_ci(mean, low, high, digits)
    if cell == "NA":
        return cell
    spread = f"{round(sd, digits) + 0.0:.{digits}f}" if np.isfinite(sd) else "NA"
    point, _, rest = cell.partition(" ")
    return f"{point} ± {spread} {rest}"


def seed_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Table 2 over training seeds: one row per scenario, ``format_mean_sd`` cells, ``seeds``.

    Args:
        summary: one row per (scenario, metric) with ``scenario, metric, mean, sd, n_seeds,
            ci_low, ci_high`` (``thyroaug.evaluation.seeds.seed_summary``).
    """
    cells: dict[str, dict[str, str]] = {}
    for row in summary.itertuples(index=False):
        cells.setdefault(row.scenario, {"seeds": ""})
        cells[row.scenario]["seeds"] = str(max(int(row.n_seeds), 0))
        label = dict((k, lab) for lab, k in table2_keys()).get(row.metric)
        if label is not None:
            cells[row.scenario][label] = format_mean_sd(row.mean, row.sd, row.ci_low, row.ci_high)
    out = pd.DataFrame.from_dict(cells, orient="index")
    out = out.reindex(columns=["seeds", *(label for label, _ in table2_keys())])
    out.index.name = "Method"
    return out


# --------------------------------------------------------------------------------------------
# Table 3
# --------------------------------------------------------------------------------------------
def _parse_fidelity_key(key: str) -> tuple[str, str, str] | None:
    """(kind, extractor, group) of ``fid_<ext>_<group>`` / ``kid_<ext>_<group>`` /
    ``kid_std_<ext>_<group>``; None for any other metric name."""
    for kind in ("kid_std", "fid", "kid"):  # kid_std first: its prefix starts with kid_
        prefix = f"{kind}_"
        if key.startswith(prefix):
            extractor, sep, group = key[len(prefix) :].rpartition("_")
            if sep and extractor and group in GROUPS:
                return kind, extractor, group
            return None
    return None


def fidelity_long(synth: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Synthesis-run fidelity metrics as the long frame ``fidelity.fidelity_by_mode`` returns.

    Args:
        synth: {method: that synthesis run's metrics}.

    Returns:
        Columns ``FIDELITY_COLUMNS`` (mode, extractor, group, fid, kid, kid_std), one row per
        (method, extractor, group); ``kid_std_*`` is the KID std of the same extractor, never an
        extractor of its own. Empty when no run has fidelity metrics.
    """
    cells: dict[tuple[str, str, str], dict[str, float]] = {}
    for method, values in synth.items():
        for key, value in values.items():
            parsed = _parse_fidelity_key(key)
            if parsed is not None:
                kind, extractor, group = parsed
                cells.setdefault((method, extractor, group), {})[kind] = float(value)
    rows = [
        {
            "mode": method,
            "extractor": extractor,
            "group": group,
            **{k: vals.get(k, math.nan) for k in ("fid", "kid", "kid_std")},
        }
        for (method, extractor, group), vals in cells.items()
    ]
    return pd.DataFrame(rows, columns=list(FIDELITY_COLUMNS))


def table3_from_long(long: pd.DataFrame) -> pd.DataFrame | None:
    """Paper Table 3 for every extractor: rows DG/NG/NL/TI/overall, columns (extractor, method,
    FID / KID / KID std).

    The (method, FID / KID) part is ``fidelity.table3`` for each extractor (the one layout); the
    KID std of the same extractor is added beside each KID. None when ``long`` is empty.
    """
    if long is None or long.empty:
        return None
    # fidelity imports torch: loaded only when there is a Table 3 to lay out
    from thyroaug.evaluation.fidelity import table3 as fidelity_table3

    parts = {}
    for extractor in dict.fromkeys(long["extractor"].astype(str)):
        part = long[long["extractor"] == extractor]
        wide = fidelity_table3(part, extractor)
        std = part.pivot(index="group", columns="mode", values="kid_std")
        for mode in std.columns:
            wide[(mode, "KID std")] = std[mode].reindex(wide.index)
        modes = list(dict.fromkeys(m for m, _ in wide.columns))
        wide = wide[[(m, k) for m in modes for k in ("FID", "KID", "KID std") if (m, k) in wide]]
        parts[extractor] = wide
    out = pd.concat(parts, axis=1)
    out.columns = out.columns.set_names(["extractor", "method", "metric"])
    out.index.name = "Class"
    return out


def table3_markdown(t3: pd.DataFrame) -> str:
    """Table 3 as Markdown, columns flattened to ``<method> [<extractor>] <metric>``."""
    flat = t3.copy()
    flat.columns = [f"{m} [{e}] {k}" for e, m, k in flat.columns]
    return M.to_markdown(flat, ".3f")


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
@dataclass
class ReportInputs:
    """Everything the HTML page shows (the compare job fills it)."""

    study_id: str
    compared: list[str]
    expected_source: str = ""
    missing: list[str] = field(default_factory=list)
    not_tested: dict[str, str] = field(default_factory=dict)  # scenario -> reason
    no_bootstrap: list[str] = field(default_factory=list)
    superseded: dict[str, list[str]] = field(default_factory=dict)
    deviations: dict[str, str] = field(default_factory=dict)
    deviations_doc: str = "docs/deviations.md"
    n_external: int = 0
    mdd: dict[str, float] = field(default_factory=dict)
    t2: pd.DataFrame | None = None  # formatted, from table2_ci
    paired: pd.DataFrame | None = None  # paired.paired_comparisons
    heatmap: Path | None = None
    metric: str = "accuracy"  # paired metric name of the main heatmap
    alpha: float = 0.05
    n_resamples: int = 0
    paper_long: pd.DataFrame | None = None  # paper_method.ComparisonResult.to_long()
    paper_heatmap: Path | None = None
    paper_resamples: tuple[int, int] = (0, 0)
    paper_summary: pd.DataFrame | None = None
    t3: pd.DataFrame | None = None
    grids: list[Path] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)  # training seeds compared, primary first
    primary_seed: str = ""  # the seed of Table 2, the paired tests and the paper method
    seed_table: pd.DataFrame | None = None  # formatted, from seed_table
    seed_tests: pd.DataFrame | None = None  # seeds.seed_tests


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'
    )


def _e(text: Any) -> str:
    return html.escape(str(text))


def _banner(r: ReportInputs) -> list[str]:
    doc = f"<code>{_e(r.deviations_doc)}</code> in the thyroaug repository"
    items = "".join(f"<li><code>{_e(k)}</code>: {_e(v)}</li>" for k, v in r.deviations.items())
    body = f"<ul>{items}</ul>" if items else "<p>None recorded by these runs.</p>"
    return [
        "<div class='banner'><b>Deviations from the paper recorded by these runs</b>",
        body,
        f"<p>Why, the paper's words, and the option that selects the alternative: {doc}.</p>",
        "</div>",
    ]


def _scope(r: ReportInputs) -> list[str]:
    parts = [
        f"<p>{len(r.compared)} scenario run(s) on the external centers: "
        f"{_e(', '.join(r.compared))}. Expected scenarios: {_e(r.expected_source)}.</p>"
    ]
    if r.missing:
        parts.append(
            f"<p><b>Missing scenarios</b> (no finished run; grey in both heatmaps): "
            f"{_e(', '.join(r.missing))}</p>"
        )
    if r.not_tested:
        items = "; ".join(f"{s}: not tested ({why})" for s, why in r.not_tested.items())
        parts.append(f"<p><b>Not tested</b> (in Table 2, grey in the heatmap): {_e(items)}</p>")
    if r.no_bootstrap:
        parts.append(
            f"<p>Not in the paper method (no bootstrap file): {_e(', '.join(r.no_bootstrap))}</p>"
        )
    if r.superseded:
        items = "; ".join(f"{s}: {', '.join(ids)}" for s, ids in r.superseded.items())
        parts.append(
            "<p>Superseded runs (an older finished run of the same scenario and seed): "
            f"{_e(items)}</p>"
        )
    if r.n_external and r.mdd:
        text = (
            f"<p>External set: {r.n_external} cases. Smallest accuracy difference a two-sided "
            f"McNemar test detects with 80 % power at alpha 0.05 (Connor 1987): "
            f"{_pct(r.mdd.get('acc_based'))} assuming independent errors at the mean accuracy "
            f"{r.mdd.get('acc', math.nan):.3f}"
        )
        if np.isfinite(r.mdd.get("psi", math.nan)):
            text += (
                f"; {_pct(r.mdd.get('psi_based'))} with the measured discordance "
                f"{r.mdd['psi']:.3f} (share of cases on which two scenarios disagree in "
                "correctness, mean over pairs)"
            )
        parts.append(text + ". Smaller true differences are likely to be missed.</p>")
    return parts


def _pct(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "not reachable (even with every discordant case favouring one model)"
    return f"{100 * value:.1f} percentage points"


def _paired_section(r: ReportInputs) -> list[str]:
    parts = [
        "<h2>Paired comparison on the same external cases (heatmap: "
        f"{_e(r.metric)}; table: every metric)</h2>"
    ]
    if r.paired is None or r.paired.empty:
        return [*parts, "<p>Fewer than two scenarios with predictions: no paired test.</p>"]
    if r.heatmap is not None:
        parts.append(_img_tag(r.heatmap, "paired difference heatmap"))
    parts.append(
        "<p>Cell = row minus column, 95 % CI in brackets (paired bootstrap over external cases, "
        f"{r.n_resamples} resamples; DeLong for macro-AUC). Marked (*, bold border): significant "
        f"by the valid test after Benjamini-Hochberg within the metric (p<sub>adj</sub> &lt; "
        f"{r.alpha:g}). Grey: missing or not tested.</p>"
    )
    shown = r.paired.copy()
    shown["significant"] = ["yes" if v else "no" for v in shown["significant"]]
    shown["difference (b - a)"] = [
        format_ci(d, lo, hi) for d, lo, hi in zip(shown["diff"], shown["ci_low"], shown["ci_high"])
    ]
    cols = ["a", "b", "metric", "difference (b - a)", "test", "p", "p_adj", "significant"]
    parts.append(shown[cols].to_html(index=False, float_format=lambda v: f"{v:.3g}"))
    return parts


def _paper_section(r: ReportInputs) -> list[str]:
    lo, hi = r.paper_resamples
    count = f"{lo}" if lo == hi else f"{lo}-{hi}"
    parts = [f"<h2>Figure 3, {_e(PAPER_METHOD_NAME)} (B = {count} resamples)</h2>"]
    if r.paper_long is None:
        return [*parts, "<p>Fewer than two scenarios with bootstrap files: not computed.</p>"]
    if r.paper_heatmap is not None:
        parts.append(_img_tag(r.paper_heatmap, "paper method heatmap"))
    parts.append(f"<p>Shown for comparison with the paper only. {_e(PAPER_METHOD_WHY)}</p>")
    if r.paper_summary is not None:
        parts.append(r.paper_summary.to_html())
    return parts


def _which_seed(r: ReportInputs) -> str:
    if len(r.seeds) < 2:
        return ""
    return (
        f"<p>Runs of training seed {_e(r.primary_seed)} (of {len(r.seeds)}: "
        f"{_e(', '.join(r.seeds))}); over all seeds see Training seeds below.</p>"
    )


def _seed_section(r: ReportInputs) -> list[str]:
    if r.seed_table is None:
        return []
    parts = [
        "<h2>Training seeds</h2>",
        f"<p>{len(r.seeds)} training seeds ({_e(', '.join(r.seeds))}). Cell = mean ± sd over "
        "the seeds of each scenario (sd ddof 1), [mean over seeds of the per-seed 95 % "
        "bootstrap interval over external cases].</p>",
        r.seed_table.to_html(),
    ]
    if r.seed_tests is None or r.seed_tests.empty:
        return [*parts, "<p>Fewer than two scenarios per seed: no seed-combined test.</p>"]
    parts.append(
        "<p>Seed-combined tests: per seed the paired difference (b - a) on the same external "
        "cases and its case-level SE (paired bootstrap; DeLong for macro-AUC); across seeds the "
        "mean difference with variance sd<sub>seeds</sub><sup>2</sup>/S + mean(SE<sup>2</sup>) "
        "and a Student t reference (<code>seed_combined_test</code>); Benjamini-Hochberg within "
        f"each metric, significant: p<sub>adj</sub> &lt; {r.alpha:g}.</p>"
    )
    shown = r.seed_tests.copy()
    shown["difference (b - a), mean over seeds"] = [
        format_ci(d, lo, hi) for d, lo, hi in zip(shown["diff"], shown["ci_low"], shown["ci_high"])
    ]
    cols = ["a", "b", "metric", "difference (b - a), mean over seeds", "sd_seeds", "n_seeds"]
    cols += ["p", "p_adj", "significant"]
    parts.append(shown[cols].to_html(index=False, float_format=lambda v: f"{v:.3g}"))
    return parts


def html_report(r: ReportInputs) -> str:
    """The study's self-contained HTML page (tables, heatmaps and sample grids inlined)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>thyroaug study {_e(r.study_id)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#eee}.banner{background:#fff4d6;border:2px solid #d9a400;padding:0.6em 1em;"
        "margin-bottom:1em}</style></head><body>",
        *_banner(r),
        f"<h1>thyroaug study <code>{_e(r.study_id)}</code></h1>",
        *_scope(r),
        "<h2>Table 2: external-set classification metrics, value [95 % CI]</h2>",
        "<p>Point estimate on all external cases; 95 % percentile bootstrap interval over "
        "external cases.</p>",
        _which_seed(r),
        r.t2.to_html() if r.t2 is not None else "<p>none</p>",
        *_paired_section(r),
        *_seed_section(r),
        *_paper_section(r),
        "<h2>Table 3: image fidelity (FID / KID, KID std)</h2>",
        r.t3.to_html(float_format=lambda v: f"{v:.4f}")
        if r.t3 is not None
        else "<p>No synthesis runs with fidelity metrics in this study.</p>",
    ]
    if r.grids:
        parts.append("<h2>Sample grids</h2>")
        parts += [f"<h3>{_e(g.stem)}</h3>{_img_tag(g, g.stem)}" for g in r.grids]
    parts.append("</body></html>")
    return "\n".join(parts)
