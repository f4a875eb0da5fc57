"""The study report: paper Table 3 from synthesis-run metrics and the self-contained HTML page.

Pure functions over tables and files; the compare job (``thyroaug.jobs.compare``) queries MLflow,
computes the tests and calls these to lay the results out.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd

from thyroaug.contract import CLASSES


def table3(synth: dict[str, Any]) -> pd.DataFrame | None:
    """FID/KID per class and overall (rows) x method and metric (columns), paper Table 3 layout.

    Args:
        synth: {method: an MLflow run (anything with ``.data.metrics``)}.

    Reads synthesis-run metrics named ``fid_<extractor>_<CLASS|overall>`` and
    ``kid_<extractor>_<CLASS|overall>`` (the extractor is part of the column name when several).
    """
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for method, run in synth.items():
        for key, value in run.data.metrics.items():
            kind, _, rest = key.partition("_")
            if kind not in ("fid", "kid") or "_" not in rest:
                continue
            extractor, _, row = rest.rpartition("_")
            if row not in (*CLASSES, "overall") or extractor.endswith("_std"):
                continue
            cells.setdefault((f"{method} [{extractor}]", kind.upper()), {})[row] = value
    if not cells:
        return None
    df = pd.DataFrame(cells).reindex([*CLASSES, "overall"])
    df.columns = pd.MultiIndex.from_tuples(df.columns, names=["method", "metric"])
    df.index.name = "Class"
    return df.sort_index(axis=1)


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'
    )


def html_report(
    study_id: str,
    n_runs: int,
    missing: list[str],
    superseded: dict[str, list[str]],
    t2: pd.DataFrame | None,
    t3: pd.DataFrame | None,
    heatmap: Path | None,
    summary: pd.DataFrame | None,
    grids: list[Path],
    metric: str,
) -> str:
    """The study's self-contained HTML page: tables, heatmap and sample grids inlined."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>thyroaug study {html.escape(study_id)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#eee}</style></head><body>",
        f"<h1>thyroaug study <code>{html.escape(study_id)}</code></h1>",
        f"<p>{n_runs} scenario run(s) compared on the external centers.</p>",
    ]
    if missing:
        parts.append(
            "<p><b>Missing scenarios</b> (no finished run): "
            + html.escape(", ".join(missing))
            + "</p>"
        )
    if superseded:
        items = "; ".join(f"{s}: {', '.join(ids)}" for s, ids in superseded.items())
        parts.append(
            "<p>Superseded runs (an older finished run of the same scenario): "
            f"{html.escape(items)}</p>"
        )
    parts.append("<h2>Table 2: external-set classification metrics</h2>")
    parts.append(t2.to_html(float_format=lambda v: f"{v:.3f}") if t2 is not None else "<p>none</p>")
    parts.append(
        f"<h2>Figure 3: pairwise Wilcoxon rank-sum on bootstrap {html.escape(metric)}</h2>"
    )
    if heatmap is not None:
        parts.append(_img_tag(heatmap, "significance heatmap"))
        parts.append(
            "<p>Benjamini-Hochberg adjusted p-values; significant at p<sub>adj</sub> &lt; 0.05.</p>"
        )
        if summary is not None:
            parts.append(summary.to_html(float_format=lambda v: f"{v:.4f}"))
    else:
        parts.append("<p>Fewer than two scenarios with bootstrap distributions: no test.</p>")
    parts.append("<h2>Table 3: image fidelity (FID / KID)</h2>")
    parts.append(
        t3.to_html(float_format=lambda v: f"{v:.4f}")
        if t3 is not None
        else "<p>No synthesis runs with fidelity metrics in this study.</p>"
    )
    if grids:
        parts.append("<h2>Sample grids</h2>")
        parts += [f"<h3>{html.escape(g.stem)}</h3>{_img_tag(g, g.stem)}" for g in grids]
    parts.append("</body></html>")
    return "\n".join(parts)
