"""The study report: Table 3 and the HTML page (Table 2's layout is ``table2``).

Pure functions over tables, plain dicts and files; the compare job (``thyroaug.jobs.compare``)
queries MLflow, runs the analysis (``thyroaug.evaluation.comparison``) and calls these to lay the
results out.

- ``fidelity_long`` / ``table3_from_long``: synthesis-run metrics ``fid_<extractor>_<group>``,
  ``kid_<extractor>_<group>`` and ``kid_std_<extractor>_<group>`` -> the long frame of
  ``fidelity.fidelity_by_mode`` -> the paper's Table 3 layout of ``fidelity.table3`` (one layout),
  with the KID std beside the KID of the same extractor.
- ``html_report``: the self-contained page (``ReportInputs`` in), opening with the deviations
  (``thyroaug.evaluation.deviations``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from thyroaug.contract import CLASSES
from thyroaug.evaluation import metrics as M

GROUPS: tuple[str, ...] = (*CLASSES, "overall")
FIDELITY_COLUMNS: tuple[str, ...] = ("mode", "extractor", "group", "fid", "kid", "kid_std")
"""Columns of the long fidelity frame (as ``fidelity.TABLE3_COLUMNS``)."""


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
