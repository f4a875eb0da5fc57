"""The study's self-contained HTML page, findings first (``ReportInputs`` in, a string out).

Table 2's numbers come from ``table2``, Table 3's from ``table3``, the findings from
``findings``; the compare job (``thyroaug.jobs.compare``) gathers them from the runs.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thyroaug.contract import CLASSES
from thyroaug.evaluation.findings import (
    Findings,
    StudyFacts,
    data_sentences,
    serious_flags,
    size_sentence,
)
from thyroaug.evaluation.paper_method import PAPER_METHOD_NAME, PAPER_METHOD_WHY
from thyroaug.evaluation.paper_values import TABLE2
from thyroaug.evaluation.table2 import format_ci

HEADLINE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Accuracy", "accuracy"),
    ("Precision (macro)", "precision_macro"),
    ("Recall (macro)", "recall_macro"),
    ("F1 (micro)", "f1_micro"),
    ("F1 (macro)", "f1_macro"),
    ("F1 (weighted)", "f1_weighted"),
    ("AUC (micro)", "auc_micro"),
    ("AUC (macro)", "auc_macro"),
    ("AUC (weighted)", "auc_weighted"),
)
"""Table 2a: the averaged numbers, one screen wide."""
CLASSWISE_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (f"{kind.capitalize()} {c}", f"{kind}_{c}")
    for kind in ("precision", "recall", "f1")
    for c in CLASSES
)
"""Table 2b: class-wise precision, recall and F1."""
VERDICT_COLOURS = {
    "reproduced": "#d7f0d0",
    "contradicted": "#f7d0cc",
    "inconclusive": "#fff1c2",
    "not testable": "#e4e4e4",
    "not run": "#f4f4f4",
}
STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;"
    "vertical-align:top;text-align:left}th{background:#eee}"
    ".banner{background:#fff4d6;border:2px solid #d9a400;padding:0.6em 1em;margin:1em 0}"
    ".scroll{overflow-x:auto;max-width:100%}.best{font-weight:bold}"
    ".paper{color:#777;font-size:10px}.flag{color:#a40000}.grid td{text-align:center}"
    ".na{color:#777;font-style:italic}"
)


@dataclass
class Cell:
    """One Table 2 number: value, interval, sd over seeds (NaN for one seed)."""

    value: float
    low: float = math.nan
    high: float = math.nan
    sd: float = math.nan


@dataclass
class ReportInputs:
    """Everything the HTML page shows (the compare job fills it)."""

    study_id: str
    compared: list[str]
    facts: StudyFacts | None = None
    findings: Findings | None = None
    table2: dict[str, dict[str, Cell]] = field(default_factory=dict)  # scenario -> key -> cell
    expected_source: str = ""
    missing: list[str] = field(default_factory=list)
    not_tested: dict[str, str] = field(default_factory=dict)
    no_bootstrap: list[str] = field(default_factory=list)
    superseded: dict[str, list[str]] = field(default_factory=dict)
    deviations: dict[str, str] = field(default_factory=dict)
    deviations_doc: str = "docs/deviations.md"
    heatmap: Path | None = None
    heatmap_source: str = "paired tests"
    metric: str = "accuracy"
    alpha: float = 0.05
    n_resamples: int = 0
    paper_long: pd.DataFrame | None = None
    paper_heatmap: Path | None = None
    paper_resamples: tuple[int, int] = (0, 0)
    paper_summary: pd.DataFrame | None = None
    t3: pd.DataFrame | None = None
    t3_notes: list[str] = field(default_factory=list)
    memorisation: pd.DataFrame | None = None
    memorisation_notes: list[str] = field(default_factory=list)
    grids: dict[str, dict[str, Path]] = field(default_factory=dict)  # method -> class -> png
    gradcam: Path | None = None
    gradcam_note: str = ""
    seeds: list[str] = field(default_factory=list)
    primary_seed: str = ""
    seed_table: pd.DataFrame | None = None
    seed_tests: pd.DataFrame | None = None


def _img(path: Path, alt: str, width: str = "100%") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" '
        f'style="max-width:{width}">'
    )


def _e(text: Any) -> str:
    return html.escape(str(text))


def _frame(df: pd.DataFrame, digits: str = ".3g") -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:{digits}}", na_rep="n/a")


def _flags(r: ReportInputs, serious: bool = False) -> dict[str, str]:
    """{scenario: its flags} (``serious``: without the size confound, which is said once)."""
    if r.findings is None:
        return {}
    rows = r.findings.sanity.itertuples()
    flags = {row.scenario: serious_flags(row.flags) if serious else row.flags for row in rows}
    return {s: f for s, f in flags.items() if f}


def _findings(r: ReportInputs) -> list[str]:
    parts = ["<section id='findings'><h2>Findings</h2>"]
    if r.facts is not None:
        parts += [f"<p>{_md_inline(t)}</p>" for t in data_sentences(r.facts)]
    if r.findings is None:
        return [*parts, "<p>No predictions to judge the paper's claims on.</p></section>"]
    f = r.findings
    rows = []
    for c in f.claims.itertuples():
        colour = VERDICT_COLOURS.get(c.verdict, "#fff")
        rows.append(
            f"<tr><td>{_e(c.claim)}</td><td>{_num(c.paper)}</td><td>{_num(c.ours)}"
            f"{_interval(c.ci_low, c.ci_high)}</td><td style='background:{colour}'>"
            f"<b>{_e(c.verdict)}</b></td><td>{_e(c.why)}</td></tr>"
        )
    source = "seed-combined tests" if f.seed_combined else "paired tests on one training seed"
    parts += [
        "<h3>The paper's claims</h3>",
        f"<p>Effects are differences (b - a) or leads on the claim's metric; verdicts from the "
        f"{source}, Benjamini-Hochberg adjusted (rules: <code>docs/statistics.md</code>, "
        "Findings).</p>",
        "<table id='claims'><tr><th>claim</th><th>paper</th><th>ours [95 % CI]</th>"
        "<th>verdict</th><th>why</th></tr>" + "".join(rows) + "</table>",
    ]
    serious = _flags(r, serious=True)
    items = "".join(f"<li><b>{_e(s)}</b>: {_e(t)}</li>" for s, t in serious.items())
    parts.append("<h3>Sanity flags</h3>")
    parts.append(f"<ul class='flag'>{items}</ul>" if items else "<p>None beyond sizes.</p>")
    if size_sentence(f.sanity):
        parts.append(f"<p>{_e(size_sentence(f.sanity))}</p>")
    if f.unconfirmed is not None and not f.unconfirmed.empty:
        items = "".join(
            f"<li>{_e(u.b)} vs {_e(u.a)} ({_e(u.metric)}): significant for seed(s) "
            f"{_e(u.significant_for_seeds)}, not after combining seeds "
            f"({u.combined_diff:+.3f}, p<sub>adj</sub> {u.combined_p_adj:.3g})</li>"
            for u in f.unconfirmed.itertuples()
        )
        parts.append(
            "<h3>Per-seed results the seed-combined test does not confirm</h3>"
            f"<ul class='flag'>{items}</ul>"
        )
    return [*parts, "</section>"]


def _md_inline(text: str) -> str:
    out = _e(text)
    while "**" in out:
        out = out.replace("**", "<b>", 1).replace("**", "</b>", 1)
    while out.count("*") >= 2:
        out = out.replace("*", "<i>", 1).replace("*", "</i>", 1)
    while "`" in out:
        out = out.replace("`", "<code>", 1).replace("`", "</code>", 1)
    return out


def _num(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:+.3f}"


def _interval(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return ""
    return f" [{low:+.2f}, {high:+.2f}]"


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
            f"<p><b>Missing scenarios</b> (no finished run): {_e(', '.join(r.missing))}</p>"
        )
    if r.not_tested:
        items = "; ".join(f"{s}: not tested ({why})" for s, why in r.not_tested.items())
        parts.append(f"<p><b>Not tested</b>: {_e(items)}</p>")
    if r.superseded:
        items = "; ".join(f"{s}: {', '.join(ids)}" for s, ids in r.superseded.items())
        parts.append(
            f"<p>Superseded runs (an older finished run of the same scenario and seed): "
            f"{_e(items)}</p>"
        )
    return parts


def _cell(c: Cell | None, best: bool, paper: float | None, na: bool) -> str:
    if na:
        return "<td class='na' title='class never predicted: precision undefined'>n/a</td>"
    if c is None or not np.isfinite(c.value):
        return "<td class='na'>n/a</td>"
    text = format_ci(c.value, c.low, c.high)
    if np.isfinite(c.sd):
        point, _, rest = text.partition(" ")
        text = f"{point} ± {c.sd:.3f} {rest}"
    if best:
        text = f"<span class='best'>{_e(text)}</span>"
    else:
        text = _e(text)
    extra = f"<br><span class='paper'>paper {paper:.2f}</span>" if paper is not None else ""
    return f"<td>{text}{extra}</td>"


def _table2(r: ReportInputs, columns: Sequence[tuple[str, str]], table_id: str) -> str:
    flags = _flags(r, serious=True)
    never = {}
    if r.findings is not None:
        never = {
            s.scenario: set(filter(None, s.never_predicted.split(",")))
            for s in r.findings.sanity.itertuples()
        }
    best = {}
    for _, key in columns:
        vals = {s: m[key].value for s, m in r.table2.items() if key in m}
        finite = {s: v for s, v in vals.items() if np.isfinite(v)}
        best[key] = max(finite.values()) if finite else math.nan
    head = "".join(f"<th>{_e(label)}</th>" for label, _ in columns)
    rows = []
    for scenario, cells in r.table2.items():
        mark = ""
        if scenario in flags:
            mark = f" <span class='flag' title='{_e(flags[scenario])}'>&#9888;</span>"
        name = f"<th>{_e(scenario)}{mark}</th>"
        tds = []
        for _, key in columns:
            cell = cells.get(key)
            na = key.startswith("precision_") and key.split("_", 1)[1] in never.get(scenario, ())
            paper = TABLE2.get(scenario, {}).get(key)
            is_best = cell is not None and np.isfinite(cell.value) and cell.value == best[key]
            tds.append(_cell(cell, is_best, paper, na))
        rows.append(f"<tr>{name}{''.join(tds)}</tr>")
    return f"<table id='{table_id}'><tr><th>Method</th>{head}</tr>{''.join(rows)}</table>"


def _table2_section(r: ReportInputs) -> list[str]:
    seeds = len(r.seeds) > 1
    what = (
        "mean ± sd over the training seeds [mean per-seed 95 % interval]"
        if seeds
        else "point estimate on all external cases [95 % percentile bootstrap interval]"
    )
    return [
        "<section id='table2'><h2>Table 2: external-set classification</h2>",
        f"<p>{what}; bold: best in the column; grey: the paper's value (its Table 2); "
        "&#9888;: a sanity flag (hover); n/a: precision of a class the classifier never "
        "predicts (undefined, not 0).</p>",
        "<h3>2a. Averages</h3>",
        _table2(r, HEADLINE_COLUMNS, "table2a"),
        "<h3>2b. Class-wise precision, recall, F1</h3>",
        f"<div class='scroll'>{_table2(r, CLASSWISE_COLUMNS, 'table2b')}</div>",
        "</section>",
    ]


def _sanity_section(r: ReportInputs) -> list[str]:
    if r.findings is None:
        return []
    s = r.findings.sanity.copy()
    cols = ["scenario", "n_train", "n_train_original", "predicted_shares", "auc_macro",
            "auc_ci_high", "flags"]  # fmt: skip
    return [
        "<section id='sanity'><h2>Sanity checks and training-set sizes</h2>",
        "<p>Share of the external cases given each class; macro-AUC and the upper end of its "
        "interval; training images (all) and original cases among them. A flagged scenario "
        "stays in every table, marked.</p>",
        _frame(s[cols]),
        "</section>",
    ]


def _contrast_cell(row: pd.Series | None) -> str:
    if row is None:
        return "<td class='na'>-</td>"
    text = _e(format_ci(row["diff"], row["ci_low"], row["ci_high"]))
    mark = " <b>*</b>" if row["significant"] else ""
    note = " &dagger;" if row["note"] else ""
    detail = f"p<sub>adj</sub> {row['p_adj']:.3g}" if np.isfinite(row["p_adj"]) else ""
    if np.isfinite(row["mdd"]) and row["mdd"] > 0:
        detail += f", mdd {row['mdd']:.2f}"
    return f"<td>{text}{mark}{note}<br><span class='paper'>{detail}</span></td>"


def _contrasts_section(r: ReportInputs) -> list[str]:
    if r.findings is None or r.findings.key_contrasts.empty:
        return []
    k = r.findings.key_contrasts
    metrics = list(dict.fromkeys(k["metric"]))
    head = "".join(f"<th>{_e(m)}</th>" for m in metrics)
    rows = []
    for label, part in k.groupby("contrast", sort=False):
        by_metric = {row["metric"]: row for _, row in part.iterrows()}
        cells = "".join(_contrast_cell(by_metric.get(m)) for m in metrics)
        rows.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")
    source = "seed-combined" if r.findings.seed_combined else "paired"
    return [
        "<section id='key-contrasts'><h2>Key contrasts</h2>",
        f"<p>The pre-specified comparisons, difference (b - a) [95 % interval] ({source} tests "
        "on the same external cases: exact McNemar for accuracy, paired bootstrap for "
        "macro-F1, DeLong for macro-AUC). Intervals are <b>unadjusted</b> 95 % intervals; "
        "p<sub>adj</sub>: Benjamini-Hochberg within these contrasts, per metric; * significant "
        f"(p<sub>adj</sub> &lt; {r.alpha:g}); &dagger; the unadjusted interval excludes 0 but "
        "the adjusted test is not significant; mdd: the difference this design detects with "
        "80 % power. Every pair of scenarios: <code>compare/paired_tests.csv</code>; these "
        "rows: <code>compare/key_contrasts.csv</code>.</p>",
        f"<table id='key-contrasts-table'><tr><th>contrast</th>{head}</tr>{''.join(rows)}</table>",
        "</section>",
    ]


def _heatmap_section(r: ReportInputs) -> list[str]:
    if r.heatmap is None:
        return []
    return [
        f"<section id='heatmap'><h2>All pairs ({_e(r.heatmap_source)}, {_e(r.metric)})</h2>",
        _img(r.heatmap, "paired difference heatmap"),
        "<p>Cell = row minus column, 95 % interval in brackets; marked: significant after "
        f"Benjamini-Hochberg within the metric (p<sub>adj</sub> &lt; {r.alpha:g}).</p>",
        "</section>",
    ]


def _per_center_section(r: ReportInputs) -> list[str]:
    if r.findings is None or r.findings.per_center is None:
        return []
    pc = r.findings.per_center
    part = pc[pc["metric"] == "macro_f1"]
    table = part.pivot(index="scenario", columns="center", values="value")
    diff = part.pivot(index="scenario", columns="center", values="diff_vs_O")
    hurts = part.pivot(index="scenario", columns="center", values="hurts")
    lo = part.pivot(index="scenario", columns="center", values="ci_low")
    hi = part.pivot(index="scenario", columns="center", values="ci_high")
    order = list(dict.fromkeys(part["scenario"]))
    n = part.groupby("center")["n"].first()
    head = "".join(f"<th>{_e(c)} (n={int(n[c])})</th>" for c in table.columns)
    rows = []
    for s in order:
        tds = []
        for c in table.columns:
            text = format_ci(table.loc[s, c], lo.loc[s, c], hi.loc[s, c])
            d = diff.loc[s, c]
            if np.isfinite(d):
                text += f"<br><span class='paper'>vs O {d:+.3f}</span>"
            style = " class='flag'" if bool(hurts.loc[s, c]) else ""
            tds.append(f"<td{style}>{text}</td>")
        rows.append(f"<tr><th>{_e(s)}</th>{''.join(tds)}</tr>")
    return [
        "<section id='per-center'><h2>Per external center (macro-F1)</h2>",
        "<p>Each center's cases alone, 95 % bootstrap interval; grey: paired difference from O "
        "at that center; red: its interval lies below 0 (augmentation hurt there). All three "
        "metrics: <code>compare/per_center.csv</code>.</p>",
        f"<table id='per-center-table'><tr><th>scenario</th>{head}</tr>{''.join(rows)}</table>",
        "</section>",
    ]


def _seed_section(r: ReportInputs) -> list[str]:
    if r.seed_table is None:
        return []
    parts = [
        "<section id='seeds'><h2>Training seeds: per-seed tables</h2>",
        f"<p>{len(r.seeds)} training seeds ({_e(', '.join(r.seeds))}). Cell = mean ± sd over "
        "the seeds of each scenario, [mean over seeds of the per-seed 95 % interval].</p>",
        f"<div class='scroll'>{r.seed_table.to_html()}</div>",
    ]
    if r.seed_tests is not None and not r.seed_tests.empty:
        shown = r.seed_tests.copy()
        shown["difference (b - a), mean over seeds"] = [
            format_ci(d, lo, hi)
            for d, lo, hi in zip(shown["diff"], shown["ci_low"], shown["ci_high"])
        ]
        cols = ["a", "b", "metric", "difference (b - a), mean over seeds", "sd_seeds",
                "n_seeds", "p", "p_adj", "significant"]  # fmt: skip
        parts += [
            "<p>Seed-combined tests (per seed the paired difference and its case-level SE; "
            "across seeds the mean with variance sd<sup>2</sup>/S + mean(SE<sup>2</sup>), "
            "Student t; Benjamini-Hochberg within each metric).</p>",
            f"<div class='scroll'>{_frame(shown[cols])}</div>",
        ]
    return [*parts, "</section>"]


def _paper_section(r: ReportInputs) -> list[str]:
    lo, hi = r.paper_resamples
    count = f"{lo}" if lo == hi else f"{lo}-{hi}"
    parts = [f"<section id='paper-method'><h2>Figure 3, {_e(PAPER_METHOD_NAME)} "
             f"(B = {count} resamples)</h2>"]  # fmt: skip
    if r.paper_long is None:
        return [*parts, "<p>Fewer than two scenarios with bootstrap files.</p></section>"]
    if r.paper_heatmap is not None:
        parts.append(_img(r.paper_heatmap, "paper method heatmap"))
    parts.append(f"<p>Shown for comparison with the paper only. {_e(PAPER_METHOD_WHY)}</p>")
    if r.paper_summary is not None:
        parts.append(f"<div class='scroll'>{r.paper_summary.to_html()}</div>")
    return [*parts, "</section>"]


def _table3_section(r: ReportInputs) -> list[str]:
    parts = ["<section id='table3'><h2>Table 3: image fidelity</h2>"]
    if r.t3 is None:
        return [*parts, "<p>No synthesis runs with fidelity metrics in this study.</p></section>"]
    parts += [f"<p>{_e(note)}</p>" for note in r.t3_notes]
    parts.append(
        f"<div class='scroll'>{r.t3.to_html(float_format=lambda v: f'{v:.4g}', na_rep='n/a')}</div>"
    )
    parts += [
        "<h3>Memorisation audit</h3>",
        "<p>Each generated image's nearest training image "
        "against the external patients' own nearest-training distances (rule: "
        "<code>docs/memorisation.md</code>).</p>",
    ]
    parts += [
        f"<p class='flag'>{_e(n)}</p>"
        if "near-cop" in n and "passed" not in n
        else f"<p>{_e(n)}</p>"
        for n in r.memorisation_notes
    ]
    if r.memorisation is not None and not r.memorisation.empty:
        parts.append(_frame(r.memorisation))
    return [*parts, "</section>"]


def _grids_section(r: ReportInputs) -> list[str]:
    if not r.grids:
        return []
    classes = [c for c in CLASSES if any(c in g for g in r.grids.values())]
    head = "".join(f"<th>{_e(c)}</th>" for c in classes)
    rows = []
    for method, grids in r.grids.items():
        tds = []
        for c in classes:
            if c in grids:
                alt = f"{method} {c}"
                tds.append(
                    f"<td><figure data-method='{_e(method)}' data-class='{_e(c)}'>"
                    f"{_img(grids[c], alt, '300px')}<figcaption>{_e(alt)}</figcaption>"
                    "</figure></td>"
                )
            else:
                tds.append("<td class='na'>none</td>")
        rows.append(f"<tr><th>{_e(method)}</th>{''.join(tds)}</tr>")
    return [
        "<section id='grids'><h2>Sample grids</h2>",
        "<p>The first 16 images of each synthetic set per class (from the synthesize run of "
        "each method).</p>",
        f"<div class='scroll'><table class='grid' id='grids-table'><tr><th>method</th>{head}"
        f"</tr>{''.join(rows)}</table></div>",
        "</section>",
    ]


def _gradcam_section(r: ReportInputs) -> list[str]:
    if r.gradcam is None and not r.gradcam_note:
        return []
    parts = ["<section id='gradcam'><h2>Grad-CAM on external cases (paper Figure 2)</h2>"]
    if r.gradcam_note:
        parts.append(f"<p>{_e(r.gradcam_note)}</p>")
    if r.gradcam is not None:
        parts.append(_img(r.gradcam, "Grad-CAM panel"))
    return [*parts, "</section>"]


def html_report(r: ReportInputs) -> str:
    """The study's self-contained HTML page (tables, figures and sample grids inlined)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>thyroaug study {_e(r.study_id)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>thyroaug study <code>{_e(r.study_id)}</code></h1>",
        *_findings(r),
        *_banner(r),
        *_scope(r),
        *_table2_section(r),
        *_sanity_section(r),
        *_contrasts_section(r),
        *_heatmap_section(r),
        *_per_center_section(r),
        *_seed_section(r),
        *_table3_section(r),
        *_grids_section(r),
        *_gradcam_section(r),
        *_paper_section(r),
        "</body></html>",
    ]
    return "\n".join(parts)


def table2_cells(
    long: pd.DataFrame | None, seed_summary: pd.DataFrame | None = None
) -> dict[str, dict[str, Cell]]:
    """Table 2 cells from ``table2_ci``'s long frame (one seed) or a seed summary (several)."""
    out: dict[str, dict[str, Cell]] = {}
    if seed_summary is not None and not seed_summary.empty:
        for row in seed_summary.itertuples(index=False):
            out.setdefault(row.scenario, {})[row.metric] = Cell(
                float(row.mean), float(row.ci_low), float(row.ci_high), float(row.sd)
            )
        return out
    if long is None:
        return out
    for row in long.itertuples(index=False):
        out.setdefault(row.scenario, {})[row.metric] = Cell(
            float(row.value), float(row.ci_low), float(row.ci_high)
        )
    return out


__all__ = [
    "CLASSWISE_COLUMNS",
    "HEADLINE_COLUMNS",
    "Cell",
    "ReportInputs",
    "html_report",
    "table2_cells",
]
