"""Table 3 (paper section 3.3.1) from synthesize runs, with what a reader needs to trust it.

The synthesize job logs each set's fidelity under the names built here (``metric_key``), and
this module reads them back: ``fidelity_long`` (one row per method x extractor x group, with the
sample sizes, the feature dimension, FID / KID and their bootstrap intervals, precision / recall /
density / coverage), ``table3`` / ``table3_markdown`` (the paper's layout: rows DG / NG / NL /
TI / overall, a column block per method) and ``table3_notes`` (plain sentences: n below the
feature dimension, the KID scale, FID and KID ranking the methods differently, extractors that are
not the paper's Inception). Runs logged before the intervals existed lay out with n/a.
Pure pandas: no torch. Definitions of the measures: ``docs/fidelity.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from thyroaug.contract import CLASSES

GROUPS: tuple[str, ...] = (*CLASSES, "overall")
"""Groups a fidelity metric is computed over: each class, and the union of the class draws."""

QUANTITIES: tuple[str, ...] = (
    "fid",
    "fid_low",
    "fid_high",
    "kid",
    "kid_std",
    "kid_low",
    "kid_high",
    "precision",
    "recall",
    "density",
    "coverage",
    "n_below_dim",
)
"""Per (extractor, group) quantities of a synthesize run (``metric_key`` spells their names)."""

_SUFFIXED = {
    "fid_low": ("fid", "ci_low"),
    "fid_high": ("fid", "ci_high"),
    "kid_low": ("kid", "ci_low"),
    "kid_high": ("kid", "ci_high"),
}
# longest prefix first: kid_std_ starts with kid_, n_below_dim_ is not an extractor of n_
_PREFIXES = ("n_below_dim", "kid_std", "precision", "recall", "density", "coverage", "fid", "kid")

KNOWN_DIMS: dict[str, int] = {"inception": 2048, "resnet18": 512}
"""Feature dimension by extractor-name prefix, for runs logged before ``feature_dim_*``."""

KID_RAW_SCALE = 1
"""Scale of the logged ``kid_*`` metrics: the raw unbiased MMD^2 (param ``fidelity_kid_scale``)."""

LONG_COLUMNS: tuple[str, ...] = (
    "method",
    "extractor",
    "dim",
    "group",
    "n_real",
    "n_fake",
    *QUANTITIES,
)
"""Columns of ``fidelity_long``; quantities ``fid_low`` / ``fid_high`` (``kid_``) are the 95 %
interval, logged as ``..._ci_low`` / ``..._ci_high``."""


def metric_key(quantity: str, extractor: str, group: str) -> str:
    """MLflow metric name of one quantity (``QUANTITIES``) of an extractor and group.

    ``fid_<ext>_<group>``, ``kid_<ext>_<group>``, ``kid_std_<ext>_<group>`` (as always);
    ``fid_<ext>_<group>_ci_low`` / ``_ci_high`` (and ``kid_``): the 95 % interval as a suffix, so
    a reader of the three historical names never takes ``ci`` for an extractor;
    ``precision_<ext>_<group>`` ... ``coverage_<ext>_<group>``; ``n_below_dim_<ext>_<group>``
    (1 when n_real or n_fake is below the feature dimension).

    Raises:
        ValueError: unknown quantity or group, or an extractor name with an underscore.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity {quantity!r}: expected one of {', '.join(QUANTITIES)}")
    if group not in GROUPS or "_" in extractor or not extractor:
        raise ValueError(
            f"group {group!r} / extractor {extractor!r}: need a group of {GROUPS} "
            "and a non-empty extractor name without '_'"
        )
    if quantity in _SUFFIXED:
        kind, suffix = _SUFFIXED[quantity]
        return f"{kind}_{extractor}_{group}_{suffix}"
    return f"{quantity}_{extractor}_{group}"


def parse_metric_key(key: str) -> tuple[str, str, str] | None:
    """(quantity, extractor, group) of a name ``metric_key`` builds; None for any other name."""
    for quantity, (kind, suffix) in _SUFFIXED.items():
        if key.startswith(f"{kind}_") and key.endswith(f"_{suffix}"):
            parsed = _split(key[len(kind) + 1 : -len(suffix) - 1])
            return (quantity, *parsed) if parsed else None
    for prefix in _PREFIXES:
        if key.startswith(f"{prefix}_"):
            parsed = _split(key[len(prefix) + 1 :])
            return (prefix, *parsed) if parsed else None
    return None


def _split(rest: str) -> tuple[str, str] | None:
    extractor, sep, group = rest.rpartition("_")
    if sep and extractor and "_" not in extractor and group in GROUPS:
        return extractor, group
    return None


def count_key(side: str, group: str) -> str:
    """``n_real_<group>`` / ``n_fake_<group>``: images compared (the same for every extractor)."""
    return f"n_{side}_{group}"


def dim_key(extractor: str) -> str:
    """``feature_dim_<extractor>``: the extractor's feature dimension."""
    return f"feature_dim_{extractor}"


def feature_dim(extractor: str, metrics: Mapping[str, float]) -> float:
    """Logged feature dimension, else the known one of the extractor family, else NaN."""
    if dim_key(extractor) in metrics:
        return float(metrics[dim_key(extractor)])
    known = [d for prefix, d in KNOWN_DIMS.items() if extractor.startswith(prefix)]
    return float(known[0]) if known else math.nan


def fidelity_long(synth: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Synthesize runs' fidelity metrics as one long frame.

    Args:
        synth: {method: that synthesize run's metrics}.

    Returns:
        Columns ``LONG_COLUMNS``, one row per (method, extractor, group) with a logged quantity;
        NaN where a run did not log one (older runs). ``n_below_dim`` is derived from the sample
        sizes and the dimension where it was not logged. Empty when no run has fidelity metrics.
    """
    cells: dict[tuple[str, str, str], dict[str, float]] = {}
    for method, values in synth.items():
        for key, value in values.items():
            parsed = parse_metric_key(key)
            if parsed is not None:
                quantity, extractor, group = parsed
                cells.setdefault((method, extractor, group), {})[quantity] = float(value)
    rows = []
    for (method, extractor, group), vals in cells.items():
        metrics = synth[method]
        row = {
            "method": method,
            "extractor": extractor,
            "dim": feature_dim(extractor, metrics),
            "group": group,
            "n_real": float(metrics.get(count_key("real", group), math.nan)),
            "n_fake": float(metrics.get(count_key("fake", group), math.nan)),
            **{q: vals.get(q, math.nan) for q in QUANTITIES},
        }
        if math.isnan(row["n_below_dim"]) and not math.isnan(row["dim"]):
            n = min(row["n_real"], row["n_fake"])
            row["n_below_dim"] = math.nan if math.isnan(n) else float(n < row["dim"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(LONG_COLUMNS))


def kid_label(kid_scale: float) -> str:
    """Column label of KID at a display scale (``KID x10^3`` for 1e3)."""
    if kid_scale == 1:
        return "KID"
    exponent = math.log10(kid_scale)
    return f"KID x10^{exponent:g}" if exponent.is_integer() else f"KID x{kid_scale:g}"


def _table_columns(kid: str) -> dict[str, tuple[str, float]]:
    """Table 3 column -> (long-frame column, factor of ``kid_scale`` applied)."""
    return {
        "n real": ("n_real", 0),
        "n fake": ("n_fake", 0),
        "FID": ("fid", 0),
        "FID low": ("fid_low", 0),
        "FID high": ("fid_high", 0),
        kid: ("kid", 1),
        f"{kid} low": ("kid_low", 1),
        f"{kid} high": ("kid_high", 1),
        f"{kid} std": ("kid_std", 1),
        "precision": ("precision", 0),
        "recall": ("recall", 0),
        "density": ("density", 0),
        "coverage": ("coverage", 0),
    }


def table3(long: pd.DataFrame, *, kid_scale: float = 1e3) -> pd.DataFrame | None:
    """The paper's Table 3 layout of ``fidelity_long``, every extractor.

    Args:
        long: ``fidelity_long`` output.
        kid_scale: factor the raw KID values are shown at (default 1e3: ``KID x10^3`` columns).

    Returns:
        Rows DG / NG / NL / TI / overall (index ``Class``); columns (extractor, method, metric)
        with metric in n real, n fake, FID, FID low, FID high, KID (scaled), its low / high / std,
        precision, recall, density, coverage; NaN where a run did not log a value. None when
        ``long`` is empty.
    """
    if long is None or long.empty:
        return None
    columns = _table_columns(kid_label(kid_scale))
    parts = {}
    for (extractor, method), part in long.groupby(["extractor", "method"], sort=False):
        frame = part.set_index("group")
        block = pd.DataFrame(
            {
                label: frame[source] * (kid_scale if scaled else 1)
                for label, (source, scaled) in columns.items()
            }
        )
        parts[(str(extractor), str(method))] = block.reindex(
            [g for g in GROUPS if g in frame.index]
        )
    out = pd.concat(parts, axis=1)
    out = out.reindex([g for g in GROUPS if g in out.index])
    out.columns = out.columns.set_names(["extractor", "method", "metric"])
    out.index.name = "Class"
    return out


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _with_interval(value: float, low: float, high: float, digits: int) -> str:
    if math.isnan(low) or math.isnan(high):
        return _fmt(value, digits)
    return f"{_fmt(value, digits)} [{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _markdown_cells(row: pd.Series, kid: str, digits: int) -> dict[str, str]:
    counts = f"{_fmt(row['n real'], 0)} / {_fmt(row['n fake'], 0)}"
    prdc = " / ".join(_fmt(row[k], 2) for k in ("precision", "recall", "density", "coverage"))
    return {
        "n real / fake": counts,
        "FID [95% CI]": _with_interval(row["FID"], row["FID low"], row["FID high"], digits),
        f"{kid} [95% CI]": _with_interval(row[kid], row[f"{kid} low"], row[f"{kid} high"], digits),
        "P / R / D / C": prdc,
    }


def table3_markdown(long: pd.DataFrame, *, kid_scale: float = 1e3, digits: int = 2) -> str:
    """Table 3 as Markdown: one table per extractor (heading: name and feature dimension), a
    column per (method, measure): n real / fake, FID [95% CI], KID [95% CI] at ``kid_scale``,
    precision / recall / density / coverage; n/a where a run did not log a value."""
    t3 = table3(long, kid_scale=kid_scale)
    if t3 is None:
        return "No synthesize run with fidelity metrics."
    kid = kid_label(kid_scale)
    blocks = []
    for extractor in dict.fromkeys(t3.columns.get_level_values("extractor")):
        dims = long.loc[long["extractor"] == extractor, "dim"].dropna()
        dim = f"{int(dims.iloc[0])}-d features" if len(dims) else "feature dimension unknown"
        cells: dict[str, dict[str, str]] = {}
        for method in dict.fromkeys(t3[extractor].columns.get_level_values("method")):
            for group, row in t3[extractor][method].iterrows():
                for name, text in _markdown_cells(row, kid, digits).items():
                    cells.setdefault(f"{method} {name}", {})[group] = text
        frame = pd.DataFrame(cells).reindex(t3.index).fillna("n/a")
        lines = [f"**{extractor}** ({dim}; {kid})", "", _pipe_table(frame)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _pipe_table(frame: pd.DataFrame) -> str:
    header = ["Class", *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Notes
# --------------------------------------------------------------------------------------------
def table3_notes(long: pd.DataFrame, *, kid_scale: float = 1e3) -> list[str]:
    """Plain sentences a reader of Table 3 needs, in this order: sample sizes below the feature
    dimension (Chong & Forsyth 2020), the KID scale, FID and KID ranking the methods differently
    (overall group) and overlapping intervals, extractors that are not the paper's Inception, and
    runs without intervals. Empty when ``long`` is empty."""
    if long is None or long.empty:
        return []
    notes = _small_n_notes(long)
    shown = "as logged" if kid_scale == 1 else kid_label(kid_scale).removeprefix("KID ")
    notes.append(
        f"KID is shown {shown}: the synthesize "
        "runs log the raw unbiased MMD^2 with the kernel (x.y/d + 1)^3 (Binkowski et al. 2018; "
        "param fidelity_kid_scale = 1); the paper does not state the scale of its KID values."
    )
    notes += _ranking_notes(long)
    notes += _extractor_notes(long)
    missing = sorted(set(long.loc[long["fid_low"].isna(), "method"].astype(str)))
    if missing:
        notes.append(
            f"n/a: no bootstrap intervals or precision / recall / density / coverage for "
            f"{', '.join(missing)} (synthesize runs logged before they were computed)."
        )
    return notes


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return f"{low}" if low == high else f"{low}-{high}"


def _small_n_notes(long: pd.DataFrame) -> list[str]:
    notes = []
    for extractor, part in long.groupby("extractor", sort=False):
        below = part[part["n_below_dim"] == 1]
        if below.empty:
            continue
        classes = below[below["group"] != "overall"]
        sizes = classes if not classes.empty else below
        notes.append(
            f"n below the feature dimension ({extractor}: {int(part['dim'].iloc[0])}-d): "
            f"{len(below)} of {len(part)} cells compare {_span(sizes['n_fake'])} generated with "
            f"{_span(sizes['n_real'])} real images per class; FID is biased upward and unstable "
            "when n is below the dimension (Chong & Forsyth 2020): compare FIDs only at equal n "
            "and read them with their intervals."
        )
    return notes


def _order(part: pd.DataFrame, column: str) -> list[str]:
    return [str(m) for m in part.sort_values(column, kind="stable")["method"]]


def _overlaps(part: pd.DataFrame, column: str) -> list[str]:
    """Adjacent methods (in ``column``'s order) whose 95 % intervals overlap."""
    ranked = part.sort_values(column, kind="stable").reset_index(drop=True)
    low, high = ranked[f"{column}_low"], ranked[f"{column}_high"]
    return [
        f"{ranked['method'][i]} and {ranked['method'][i + 1]}"
        for i in range(len(ranked) - 1)
        if not (math.isnan(high[i]) or math.isnan(low[i + 1])) and high[i] >= low[i + 1]
    ]


def _ranking_notes(long: pd.DataFrame) -> list[str]:
    notes = []
    overall = long[long["group"] == "overall"].dropna(subset=["fid", "kid"])
    for extractor, part in overall.groupby("extractor", sort=False):
        if len(part) < 2:
            continue
        by_fid, by_kid = _order(part, "fid"), _order(part, "kid")
        if by_fid != by_kid:
            notes.append(
                f"FID and KID rank the methods differently ({extractor}, overall, best first): "
                f"FID {' < '.join(by_fid)}; KID {' < '.join(by_kid)}."
            )
        pairs = {k: _overlaps(part, k) for k in ("fid", "kid")}
        said = [f"{k.upper()} {', '.join(v)}" for k, v in pairs.items() if v]
        if said:
            notes.append(
                f"Overlapping 95 % intervals ({extractor}, overall; neighbours in rank): "
                f"{'; '.join(said)}: these sets do not establish their order."
            )
    return notes


def _extractor_notes(long: pd.DataFrame) -> list[str]:
    notes = []
    for extractor in dict.fromkeys(long["extractor"].astype(str)):
        if extractor == "inception":
            continue
        note = (
            f"{extractor} features are not the Inception-v3 features of the paper: these FID / "
            "KID values are not comparable with the paper's Inception numbers"
        )
        if extractor.endswith("-random"):
            note += " (a fixed-seed untrained ResNet18: comparable only between runs that use it)"
        notes.append(note + ".")
    return notes
