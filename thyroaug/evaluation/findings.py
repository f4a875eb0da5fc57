"""What a study found, set against the paper's claims: claims table, key contrasts, sanity flags
and per-center results. DataFrames in, DataFrames out (the compare job writes and logs them).

A *contrast* is ``metric(b) - metric(a)`` on the same external cases with its 95 % interval,
standard error and p-value: from the paired tests (one training seed) or the seed-combined tests
(several seeds). Verdict rules (docs/statistics.md, "Findings"), for a claim that b beats a by
the paper's effect ``e > 0``, with ``mdd = (z_0.975 + z_0.80) * se`` the difference this design
detects with 80 % power:

- ``reproduced``: the difference is positive and significant after Benjamini-Hochberg;
- ``contradicted``: significant the other way, or the interval lies below ``e`` although the
  design could detect ``e`` (``mdd <= e``): our data exclude the paper's effect;
- ``not testable``: ``mdd > e`` and nothing significant: the design cannot see the paper's effect;
- ``inconclusive``: the design could see ``e``, but the interval holds both 0 and ``e``;
- ``not run``: a scenario (or method) the claim needs has no run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from thyroaug.contract import CLASSES
from thyroaug.evaluation.bootstrap import bootstrap, summarize
from thyroaug.evaluation.fdr import benjamini_hochberg_within
from thyroaug.evaluation.metrics import compute_metrics
from thyroaug.evaluation.paired import paired_bootstrap, seed_combined_test
from thyroaug.evaluation.paper_values import TABLE2

VERDICTS: tuple[str, ...] = (
    "reproduced",
    "contradicted",
    "inconclusive",
    "not testable",
    "not run",
)
CLAIM_COLUMNS: tuple[str, ...] = ("claim", "paper", "ours", "ci_low", "ci_high", "verdict", "why")
CONTRAST_COLUMNS: tuple[str, ...] = (
    "contrast",
    "a",
    "b",
    "metric",
    "diff",
    "ci_low",
    "ci_high",
    "se",
    "p",
    "p_adj",
    "significant",
    "mdd",
    "note",
)
HEADLINE: tuple[str, ...] = ("accuracy", "macro_f1", "macro_auc")
TABLE2_KEY = {"accuracy": "accuracy", "macro_f1": "f1_macro", "macro_auc": "auc_macro"}
"""Contrast metric name -> ``compute_metrics`` key (class-wise contrasts use the key itself)."""
NEAR_ONE_CLASS = 0.95
"""A classifier that gives one class to this share of the external cases predicts one class."""


def detectable(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The difference a two-sided test at ``alpha`` detects with ``power``, given its SE."""
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * se)


def _key(metric: str) -> str:
    return TABLE2_KEY.get(metric, metric)


@dataclass(frozen=True)
class Contrast:
    """``metric(b) - metric(a)`` with its 95 % interval, SE, p and BH-adjusted p."""

    a: str
    b: str
    metric: str
    diff: float
    ci_low: float
    ci_high: float
    se: float
    p: float
    p_adj: float

    def reversed(self) -> Contrast:
        """The same contrast as ``metric(a) - metric(b)``."""
        return Contrast(
            self.b,
            self.a,
            self.metric,
            -self.diff,
            -self.ci_high,
            -self.ci_low,
            self.se,
            self.p,
            self.p_adj,
        )

    def significant(self, alpha: float) -> bool:
        return bool(np.isfinite(self.p_adj) and self.p_adj < alpha)

    def mdd(self, alpha: float) -> float:
        return detectable(self.se, alpha)


class Contrasts:
    """Look-up of contrasts from tables with columns a, b, metric, diff, ci_low, ci_high, se, p,
    p_adj (``paired_comparisons``, ``seed_tests``, ``classwise_contrasts``)."""

    def __init__(self, *frames: pd.DataFrame | None) -> None:
        self._rows: dict[tuple[str, str, str], Contrast] = {}
        for frame in frames:
            if frame is None or frame.empty:
                continue
            for r in frame.itertuples(index=False):
                c = Contrast(
                    str(r.a),
                    str(r.b),
                    str(r.metric),
                    float(r.diff),
                    float(r.ci_low),
                    float(r.ci_high),
                    float(r.se),
                    float(r.p),
                    float(r.p_adj),
                )
                self._rows[(c.a, c.b, c.metric)] = c

    def get(self, a: str, b: str, metric: str) -> Contrast | None:
        """``metric(b) - metric(a)``, from either orientation; None when not computed."""
        if (a, b, metric) in self._rows:
            return self._rows[(a, b, metric)]
        other = self._rows.get((b, a, metric))
        return other.reversed() if other is not None else None


def _fmt(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:+.3f}"


def directional_verdict(c: Contrast | None, effect: float, alpha: float) -> tuple[str, str]:
    """Verdict on "b beats a by ``effect`` > 0" (module docstring) and the reason in words."""
    if c is None:
        return "not run", f"no contrast of {c}"
    if not c.se > 0:  # the two classifiers agree on every resampled case set: no information
        return "not testable", "the two classifiers do not differ on any resample: no evidence"
    mdd = c.mdd(alpha)
    interval = f"{_fmt(c.diff)} [{_fmt(c.ci_low)}, {_fmt(c.ci_high)}], p_adj {c.p_adj:.3g}"
    power = f"detectable difference {mdd:.3f} vs the paper's {effect:+.3f}"
    if c.significant(alpha) and c.diff > 0:
        return "reproduced", f"{interval}: significant in the paper's direction ({power})"
    if c.significant(alpha) and c.diff < 0:
        return "contradicted", f"{interval}: significant against the paper ({power})"
    if mdd <= effect and c.ci_high < effect:
        why = f"{interval}: excludes the paper's effect, which this design could detect"
        return "contradicted", f"{why} ({power})"
    if mdd > effect:
        return "not testable", f"{interval}: not significant; {power}"
    return "inconclusive", f"{interval}: not significant, holds 0 and the paper's effect ({power})"


def best_verdict(
    candidate: str,
    values: Mapping[str, float],
    contrasts: Contrasts,
    metric: str,
    margin: float,
    alpha: float,
) -> tuple[str, float, float, float, str]:
    """Verdict on "``candidate`` has the highest ``metric`` of ``values``", the paper's lead
    being ``margin`` over its runner-up: (verdict, lead, ci_low, ci_high, why).

    The lead is candidate minus the best other scenario (our runner-up, or our top one when the
    candidate is not on top). ``reproduced``: on top and significantly ahead of the runner-up;
    ``contradicted``: another scenario is significantly ahead; ``not testable`` /
    ``inconclusive``: as ``directional_verdict`` with the paper's margin as the effect.
    """
    if candidate not in values or len(values) < 2:
        return "not run", math.nan, math.nan, math.nan, f"{candidate} or its rivals have no run"
    ranked = sorted(values, key=lambda s: values[s], reverse=True)
    rival = ranked[1] if ranked[0] == candidate else ranked[0]
    c = contrasts.get(rival, candidate, metric)
    if c is None:
        return "not run", math.nan, math.nan, math.nan, f"no contrast of {candidate} vs {rival}"
    place = f"ours: {candidate} is #{ranked.index(candidate) + 1} of {len(ranked)}; vs {rival}"
    verdict, why = directional_verdict(c, margin, alpha)
    if ranked[0] != candidate and verdict == "reproduced":  # cannot be: the rival is ahead
        verdict = "inconclusive"
    return verdict, c.diff, c.ci_low, c.ci_high, f"{place}: {why}"


# --------------------------------------------------------------------------------------------
# the claims
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evidence:
    """What the claims are judged on.

    Attributes:
        values: scenario -> Table 2 metrics (seed means with several seeds).
        contrasts: paired or seed-combined contrasts, class-wise ones included.
        fidelity: Table 3 long frame (method, group, fid, kid, and their ``_low`` / ``_high``
            interval columns when available) of one feature extractor, or None.
        alpha: FDR level.
        one_class: scenarios flagged as one-class predictors (claims on them: not testable).
    """

    values: Mapping[str, Mapping[str, float]]
    contrasts: Contrasts
    fidelity: pd.DataFrame | None = None
    alpha: float = 0.05
    one_class: frozenset[str] = frozenset()

    def unusable(self, *scenarios: str) -> str:
        """Why a claim on these scenarios cannot be judged ("" when it can)."""
        bad = [s for s in scenarios if s in self.one_class]
        return f"{', '.join(bad)} predict(s) one class: not a result" if bad else ""


def _paper_diff(a: str, b: str, metric: str) -> float:
    return TABLE2[b][_key(metric)] - TABLE2[a][_key(metric)]


def _directional(ev: Evidence, claim: str, a: str, b: str, metric: str) -> dict:
    effect = _paper_diff(a, b, metric)
    c = ev.contrasts.get(a, b, metric) if a in ev.values and b in ev.values else None
    if c is None:
        return _row(claim, effect, verdict="not run", why=f"needs runs of {a} and {b}")
    if ev.unusable(a, b):
        return _row(claim, effect, c.diff, c.ci_low, c.ci_high, "not testable", ev.unusable(a, b))
    if effect > 0:
        verdict, why = directional_verdict(c, effect, ev.alpha)
        return _row(claim, effect, c.diff, c.ci_low, c.ci_high, verdict, why)
    # the paper's text claims a gain its own Table 2 does not show: no effect size to test
    verdict = "not testable"
    if c.significant(ev.alpha):
        verdict = "reproduced" if c.diff > 0 else "contradicted"
    why = (
        f"{_fmt(c.diff)} [{_fmt(c.ci_low)}, {_fmt(c.ci_high)}], p_adj {c.p_adj:.3g}; the "
        f"paper's Table 2 itself gives {effect:+.3f} for this claimed gain"
    )
    return _row(claim, effect, c.diff, c.ci_low, c.ci_high, verdict, why)


def _row(claim, paper, ours=math.nan, lo=math.nan, hi=math.nan, verdict="", why="") -> dict:
    return dict(zip(CLAIM_COLUMNS, (claim, paper, ours, lo, hi, verdict, why)))


def _best(ev: Evidence, claim: str, candidate: str, pool: Sequence[str], metric: str) -> dict:
    key = _key(metric)
    paper = {s: TABLE2[s][key] for s in pool}
    margin = paper[candidate] - max(v for s, v in paper.items() if s != candidate)
    ours = {s: float(ev.values[s][key]) for s in pool if s in ev.values}
    if candidate in ours and ev.unusable(candidate):
        return _row(claim, margin, verdict="not testable", why=ev.unusable(candidate))
    verdict, lead, lo, hi, why = best_verdict(
        candidate, ours, ev.contrasts, metric, margin, ev.alpha
    )
    return _row(claim, margin, lead, lo, hi, verdict, why)


def _weakest(ev: Evidence, claim: str, weak: Sequence[str], metric: str) -> dict:
    """Each of ``weak`` significantly worse than at least 3/4 of the other scenarios."""
    present = [s for s in ev.values if s not in weak]
    if any(w not in ev.values for w in weak) or not present:
        return _row(claim, math.nan, verdict="not run", why=f"needs runs of {', '.join(weak)}")
    if ev.unusable(*weak):
        return _row(claim, 1.0, verdict="not testable", why=ev.unusable(*weak))
    shares, beats = [], []
    for w in weak:
        cs = [ev.contrasts.get(w, s, metric) for s in present]
        worse = [c for c in cs if c is not None and c.significant(ev.alpha) and c.diff > 0]
        better = [c for c in cs if c is not None and c.significant(ev.alpha) and c.diff < 0]
        shares.append(len(worse) / len(present))
        beats += [f"{w} > {c.b}" for c in better]
    share = min(shares)
    why = f"share of the other {len(present)} scenarios significantly better: " + ", ".join(
        f"{w} {s:.0%}" for w, s in zip(weak, shares)
    )
    if beats:
        return _row(claim, 1.0, share, verdict="contradicted", why=f"{why}; but {', '.join(beats)}")
    verdict = "reproduced" if share >= 0.75 else "inconclusive"
    return _row(claim, 1.0, share, verdict=verdict, why=f"{why} (paper: almost all)")


def _fidelity_lowest(ev: Evidence, claim: str, method: str) -> dict:
    """``method`` has the lowest FID and KID overall and in every class."""
    fid = ev.fidelity
    if fid is None or fid.empty or method not in set(fid["method"]) or fid["method"].nunique() < 2:
        return _row(claim, math.nan, verdict="not run", why="needs synthesis runs with FID/KID")
    wins, losses, cells = 0, [], 0
    for (group, measure), part in _fidelity_cells(fid):
        cells += 1
        mine = part[part["method"] == method].iloc[0]
        others = part[part["method"] != method]
        if (others[measure] > mine[measure]).all():
            wins += 1
        low, high = f"{measure}_low", f"{measure}_high"
        if low in part and high in part:
            clearly = others[others[high] < mine[low]]
            losses += [f"{r.method} {measure} {group}" for r in clearly.itertuples()]
    why = f"{method} lowest in {wins} of {cells} (group, FID/KID) cells"
    overall = fid[fid["group"] == "overall"]
    for measure in ("fid", "kid"):
        if measure in overall and overall[measure].notna().any():
            top = overall.loc[overall[measure].idxmin()]
            mine = overall.loc[overall["method"] == method, measure]
            why += f"; lowest overall {measure.upper()}: {top['method']} {top[measure]:.3g}"
            why += f" ({method} {float(mine.iloc[0]):.3g})" if len(mine) else ""
    if losses:
        why += f"; interval clearly below {method}'s: {', '.join(losses[:6])}"
        return _row(claim, 1.0, wins / cells, verdict="contradicted", why=why)
    verdict = "reproduced" if wins == cells else "inconclusive"
    return _row(claim, 1.0, wins / cells, verdict=verdict, why=why)


def _fidelity_cells(fid: pd.DataFrame):
    for group in [*CLASSES, "overall"]:
        part = fid[fid["group"] == group]
        for measure in ("fid", "kid"):
            if measure in part and part[measure].notna().sum() >= 2:
                yield (group, measure), part[part[measure].notna()]


CLAIMS: tuple[tuple[str, Callable[[Evidence], dict]], ...] = (
    (
        "O+FM has the best macro-F1 of the 18 scenarios",
        lambda ev: _best(ev, "", "O+FM", list(TABLE2), "macro_f1"),
    ),
    ("O+FM beats O (macro-F1)", lambda ev: _directional(ev, "", "O", "O+FM", "macro_f1")),
    (
        "O+FM beats O+FM+CA (macro-F1)",
        lambda ev: _directional(ev, "", "O+FM+CA", "O+FM", "macro_f1"),
    ),
    (
        "O+FM beats O+FM+CA (macro-AUC)",
        lambda ev: _directional(ev, "", "O+FM+CA", "O+FM", "macro_auc"),
    ),
    ("FM alone beats O in NL (F1)", lambda ev: _directional(ev, "", "O", "FM", "f1_NL")),
    ("FM alone beats O in TI (F1)", lambda ev: _directional(ev, "", "O", "FM", "f1_TI")),
    (
        "SD1 is the best SD variant alone (macro-F1)",
        lambda ev: _best(ev, "", "SD1", ["SD1", "SD2", "SD3", "SD4"], "macro_f1"),
    ),
    ("O+SD1 beats O (macro-F1)", lambda ev: _directional(ev, "", "O", "O+SD1", "macro_f1")),
    (
        "SD3 and SD4 are the weakest (macro-F1)",
        lambda ev: _weakest(ev, "", ["SD3", "SD4"], "macro_f1"),
    ),
    (
        "FM has the lowest FID and KID, overall and in every class",
        lambda ev: _fidelity_lowest(ev, "", "FM"),
    ),
)
"""(claim, judge) pairs; the claims of the paper's abstract, results and discussion."""


def claims_table(ev: Evidence) -> pd.DataFrame:
    """One row per claim: ``CLAIM_COLUMNS``. ``paper`` and ``ours`` are the effect (difference
    or lead) on the claim's metric; for the weakest / lowest-FID claims, the share of rivals or
    cells that agree (paper: 1)."""
    rows = []
    for claim, judge in CLAIMS:
        row = judge(ev)
        row["claim"] = claim
        rows.append(row)
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


# --------------------------------------------------------------------------------------------
# contrasts the claims and the key-contrast table need
# --------------------------------------------------------------------------------------------
def key_pairs(scenarios: Sequence[str], methods: Sequence[str]) -> list[tuple[str, str, str]]:
    """The pre-specified contrasts (label, a, b), diff = b - a: each O+X vs O and X vs O, each
    O+X vs O+X+CA, FM vs each SD method alone; only pairs whose scenarios are present."""
    have = set(scenarios)
    sd = [m for m in methods if m.startswith("SD")]
    pairs = []
    for x in ["CA", *methods]:
        pairs.append((f"O+{x} vs O", "O", f"O+{x}"))
    for x in ["CA", *methods]:
        pairs.append((f"{x} vs O", "O", x))
    for x in methods:
        pairs.append((f"O+{x} vs O+{x}+CA", f"O+{x}+CA", f"O+{x}"))
    pairs += [(f"FM vs {m}", m, "FM") for m in sd if "FM" in methods]
    return [(label, a, b) for label, a, b in pairs if a in have and b in have]


def key_contrasts(
    contrasts: Contrasts,
    pairs: Sequence[tuple[str, str, str]],
    alpha: float,
    metrics: Sequence[str] = HEADLINE,
) -> pd.DataFrame:
    """The key contrasts with Benjamini-Hochberg within this family (per metric): the few
    pre-specified comparisons keep more power than all 153 pairs. Intervals are unadjusted 95 %
    intervals; ``note`` says where one excludes 0 although the adjusted test does not."""
    rows = []
    for label, a, b in pairs:
        for metric in metrics:
            c = contrasts.get(a, b, metric)
            if c is not None:
                rows.append(
                    {
                        "contrast": label,
                        "a": a,
                        "b": b,
                        "metric": metric,
                        "diff": c.diff,
                        "ci_low": c.ci_low,
                        "ci_high": c.ci_high,
                        "se": c.se,
                        "p": c.p,
                        "mdd": c.mdd(alpha),
                    }
                )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(CONTRAST_COLUMNS))
    frame["p_adj"] = benjamini_hochberg_within(frame, "metric", "p")
    frame["significant"] = frame["p_adj"].fillna(1.0) < alpha
    excludes = (frame["ci_low"] > 0) | (frame["ci_high"] < 0)
    frame["note"] = np.where(
        excludes & ~frame["significant"],
        "unadjusted 95 % interval excludes 0, not significant after BH",
        "",
    )
    return frame[list(CONTRAST_COLUMNS)].reset_index(drop=True)


def _indexed(metric: str) -> str:
    """``f1_NL`` -> ``f1_2``: a class-wise metric named by class index."""
    kind, _, cls = metric.rpartition("_")
    return f"{kind}_{CLASSES.index(cls)}" if cls in CLASSES else metric


def classwise_contrasts(
    y: np.ndarray,
    probas: Mapping[tuple[str, str], np.ndarray],
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    n_resamples: int,
    seed: int,
) -> pd.DataFrame:
    """Contrasts of class-wise metrics (``f1_NL``...): paired bootstrap per training seed,
    combined over seeds (``seed_combined_test``; one seed: the paired bootstrap itself).

    Args:
        y: true classes of the external cases.
        probas: {(scenario, training seed): probabilities [n, K]}.
        pairs: (a, b) scenario pairs, diff = b - a.
        metrics: Table 2 metric names.
        n_resamples: bootstrap resamples.
        seed: resample seed.

    Returns:
        Columns a, b, metric, diff, ci_low, ci_high, se, p, n_seeds, p_adj (BH within metric).
    """
    rows = []
    for a, b in pairs:
        seeds = [s for (name, s) in probas if name == a and (b, s) in probas]
        for metric in metrics:
            name = _indexed(metric)  # paired_bootstrap names classes by index
            per_seed = [
                paired_bootstrap(y, probas[(a, s)], probas[(b, s)], [name], n_resamples, seed)
                for s in seeds
            ]
            if not per_seed:
                continue
            table = pd.concat(per_seed, ignore_index=True)
            if len(table) == 1:
                r = table.iloc[0]
                res = {k: float(r[k]) for k in ("diff", "ci_low", "ci_high", "se")}
                res["p"] = float(r["p_value"])
            else:
                comb = seed_combined_test(table[["diff", "se"]])
                res = {k: comb[k] for k in ("diff", "ci_low", "ci_high", "se")}
                res["p"] = comb["p_value"]
            rows.append({"a": a, "b": b, "metric": metric, **res, "n_seeds": len(seeds)})
    frame = pd.DataFrame(
        rows, columns=["a", "b", "metric", "diff", "ci_low", "ci_high", "se", "p", "n_seeds"]
    )
    frame["p_adj"] = benjamini_hochberg_within(frame, "metric", "p") if len(frame) else []
    return frame


CLASSWISE_CLAIMS: tuple[tuple[str, str], ...] = (("O", "FM"),)
CLASSWISE_METRICS: tuple[str, ...] = ("f1_NL", "f1_TI")


# --------------------------------------------------------------------------------------------
# sanity flags
# --------------------------------------------------------------------------------------------
SANITY_COLUMNS: tuple[str, ...] = (
    "scenario",
    "n_train",
    "n_train_original",
    "predicted_shares",
    "top_class",
    "top_share",
    "never_predicted",
    "auc_macro",
    "auc_ci_high",
    "flags",
)


def sanity_flags(
    y: np.ndarray,
    probas: Mapping[str, np.ndarray],
    auc_intervals: Mapping[str, tuple[float, float, float]],
    train_sizes: Mapping[str, tuple[int, int]],
) -> pd.DataFrame:
    """What makes a scenario's numbers nonsense or not comparable, one row per scenario.

    Flags: ``one-class predictor`` (one class for >= 95 % of the external cases), ``AUC below
    chance`` (the macro-AUC interval lies below 0.5), ``never predicts <C>`` (its precision is
    undefined, not 0), ``size confound`` (trained on fewer or more images than O: a
    synthetic-only arm's difference from O mixes the source of its images with their number).

    Args:
        y: true classes of the external cases (only their count is used).
        probas: {scenario: probabilities [n, K]}.
        auc_intervals: {scenario: (macro-AUC, ci_low, ci_high)}.
        train_sizes: {scenario: (training images, of which original cases)}.
    """
    n_o = train_sizes.get("O", (0, 0))[0]
    rows = []
    for scenario, p in probas.items():
        counts = np.bincount(p.argmax(axis=1), minlength=len(CLASSES))
        shares = counts / max(len(y), 1)
        top = int(shares.argmax())
        never = [CLASSES[k] for k in range(len(CLASSES)) if counts[k] == 0]
        auc, _, auc_hi = auc_intervals.get(scenario, (math.nan, math.nan, math.nan))
        n_train, n_orig = train_sizes.get(scenario, (0, 0))
        flags = []
        if shares[top] >= NEAR_ONE_CLASS:
            flags.append(f"one-class predictor ({CLASSES[top]} for {counts[top]}/{len(y)})")
        if np.isfinite(auc_hi) and auc_hi < 0.5:
            flags.append(f"AUC below chance (macro-AUC {auc:.3f}, interval up to {auc_hi:.3f})")
        if never and shares[top] < NEAR_ONE_CLASS:
            flags.append(f"never predicts {', '.join(never)} (precision undefined)")
        if n_o and n_train and n_train != n_o:
            what = "synthetic only" if n_orig == 0 else "more images"
            flags.append(f"size confound ({what}: {n_train} training images vs O's {n_o})")
        rows.append(
            {
                "scenario": scenario,
                "n_train": n_train,
                "n_train_original": n_orig,
                "predicted_shares": " ".join(f"{c}:{s:.2f}" for c, s in zip(CLASSES, shares)),
                "top_class": CLASSES[top],
                "top_share": float(shares[top]),
                "never_predicted": ",".join(never),
                "auc_macro": auc,
                "auc_ci_high": auc_hi,
                "flags": "; ".join(flags),
            }
        )
    return pd.DataFrame(rows, columns=list(SANITY_COLUMNS))


# --------------------------------------------------------------------------------------------
# per external center
# --------------------------------------------------------------------------------------------
PER_CENTER_COLUMNS: tuple[str, ...] = (
    "scenario",
    "center",
    "n",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "diff_vs_O",
    "diff_ci_low",
    "diff_ci_high",
    "hurts",
)


def per_center(
    y: np.ndarray,
    centers: np.ndarray,
    probas: Mapping[str, np.ndarray],
    n_resamples: int,
    seed: int,
    metrics: Sequence[str] = HEADLINE,
) -> pd.DataFrame:
    """Each scenario on each external center with 95 % bootstrap intervals (cases of that
    center resampled), and its paired difference from O there; ``hurts``: the difference's
    interval lies below 0 (augmentation made that center worse)."""
    rows = []
    for center in sorted(set(centers)):
        pick = centers == center
        yc = y[pick]
        base = probas.get("O")
        for scenario, p in probas.items():
            pc = p[pick]
            values = compute_metrics(yc, pc)
            interval = summarize(bootstrap(yc, pc, n_resamples, seed, [_key(m) for m in metrics]))
            diffs = None
            if base is not None and scenario != "O":
                diffs = paired_bootstrap(yc, base[pick], pc, list(metrics), n_resamples, seed)
                diffs = diffs.set_index("metric")
            for metric in metrics:
                key = _key(metric)
                d = diffs.loc[metric] if diffs is not None else None
                rows.append(
                    {
                        "scenario": scenario,
                        "center": center,
                        "n": int(pick.sum()),
                        "metric": metric,
                        "value": float(values[key]),
                        "ci_low": float(interval.loc[key, "lower"]),
                        "ci_high": float(interval.loc[key, "upper"]),
                        "diff_vs_O": float(d["diff"]) if d is not None else math.nan,
                        "diff_ci_low": float(d["ci_low"]) if d is not None else math.nan,
                        "diff_ci_high": float(d["ci_high"]) if d is not None else math.nan,
                        "hurts": bool(d is not None and d["ci_high"] < 0),
                    }
                )
    return pd.DataFrame(rows, columns=list(PER_CENTER_COLUMNS))


# --------------------------------------------------------------------------------------------
# everything together, and in words
# --------------------------------------------------------------------------------------------
@dataclass
class Findings:
    """The study's findings (the compare job writes each frame as a CSV)."""

    claims: pd.DataFrame
    key_contrasts: pd.DataFrame
    sanity: pd.DataFrame
    per_center: pd.DataFrame | None
    classwise: pd.DataFrame
    unconfirmed: pd.DataFrame | None  # per-seed significant, not by the seed-combined test
    seed_combined: bool


def unconfirmed_by_seeds(
    per_seed: pd.DataFrame, combined: pd.DataFrame, alpha: float
) -> pd.DataFrame:
    """Pairwise results significant for some training seed that the seed-combined test does
    not confirm: (a, b, metric, seeds where significant, per-seed diffs, combined diff, p_adj)."""
    sig = per_seed[per_seed["significant"]]
    rows = []
    for (a, b, metric), g in sig.groupby(["a", "b", "metric"], sort=False):
        hit = combined[(combined["a"] == a) & (combined["b"] == b) & (combined["metric"] == metric)]
        if hit.empty or bool(hit["significant"].iloc[0]):
            continue
        rows.append(
            {
                "a": a,
                "b": b,
                "metric": metric,
                "significant_for_seeds": ",".join(g["seed"].astype(str)),
                "diff_by_seed": hit["diff_by_seed"].iloc[0] if "diff_by_seed" in hit else "",
                "combined_diff": float(hit["diff"].iloc[0]),
                "combined_p_adj": float(hit["p_adj"].iloc[0]),
            }
        )
    return pd.DataFrame(rows)


def find(
    *,
    y: np.ndarray,
    probas: Mapping[str, np.ndarray],
    centers: np.ndarray | None,
    values: Mapping[str, Mapping[str, float]],
    paired: pd.DataFrame | None,
    auc_intervals: Mapping[str, tuple[float, float, float]],
    train_sizes: Mapping[str, tuple[int, int]],
    methods: Sequence[str],
    fidelity: pd.DataFrame | None = None,
    seed_probas: Mapping[tuple[str, str], np.ndarray] | None = None,
    seed_tests: pd.DataFrame | None = None,
    per_seed_paired: pd.DataFrame | None = None,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Findings:
    """Claims, key contrasts, sanity flags and per-center results of a study.

    Args:
        y: true classes of the external cases; ``probas``: {scenario: probabilities} of the
            primary training seed; ``centers``: external center of each case (None: unknown).
        values: {scenario: Table 2 metrics} the claims use (seed means with several seeds).
        paired: ``paired_comparisons`` of the primary seed.
        auc_intervals: {scenario: (macro-AUC, ci_low, ci_high)}.
        train_sizes: {scenario: (training images, original cases among them)}.
        methods: generator methods in canonical order (for the key contrasts).
        fidelity: Table 3 long frame of one extractor (``Evidence.fidelity``).
        seed_probas / seed_tests / per_seed_paired: with several training seeds, the
            probabilities per (scenario, seed), the seed-combined tests and the per-seed
            paired tests (with a ``seed`` column); the contrasts then come from them.
        alpha, n_resamples, seed: FDR level and bootstrap settings.
    """
    several = seed_tests is not None and not seed_tests.empty
    headline = seed_tests if several else paired
    seed_probas = seed_probas or {(s, "0"): p for s, p in probas.items()}
    pairs = [(a, b) for a, b in CLASSWISE_CLAIMS if a in probas and b in probas]
    classwise = classwise_contrasts(y, seed_probas, pairs, CLASSWISE_METRICS, n_resamples, seed)
    contrasts = Contrasts(headline, classwise)
    sanity = sanity_flags(y, probas, auc_intervals, train_sizes)
    one_class = frozenset(sanity.loc[sanity["top_share"] >= NEAR_ONE_CLASS, "scenario"])
    ev = Evidence(values, contrasts, fidelity, alpha, one_class)
    unconfirmed = None
    if several and per_seed_paired is not None:
        unconfirmed = unconfirmed_by_seeds(per_seed_paired, seed_tests, alpha)
    return Findings(
        claims=claims_table(ev),
        key_contrasts=key_contrasts(contrasts, key_pairs(list(probas), methods), alpha),
        sanity=sanity,
        per_center=(
            per_center(y, centers, probas, n_resamples, seed)
            if centers is not None and len(set(centers)) > 1
            else None
        ),
        classwise=classwise,
        unconfirmed=unconfirmed,
        seed_combined=several,
    )


@dataclass(frozen=True)
class StudyFacts:
    """What the findings open with: the data, the design, its power."""

    study_id: str
    profile: str
    data_kind: str  # phantom / manifest / unknown
    data_detail: str
    n_train: int  # original training cases (centers A-F, training split)
    n_val: int
    n_external: int
    seeds: tuple[str, ...]
    mdd_accuracy: float = math.nan


def data_sentences(facts: StudyFacts) -> list[str]:
    from thyroaug.evaluation.paper_values import EXTERNAL_CASES, TRAIN_VAL_CASES

    what = {
        "phantom": f"the **phantom cohort** simulated by thyroaug ({facts.data_detail})",
        "manifest": f"a user cohort ({facts.data_detail})",
    }.get(facts.data_kind, "a cohort whose source is not recorded")
    out = [
        f"Data: {what}; {facts.n_train} training, {facts.n_val} validation and "
        f"{facts.n_external} external cases (the paper: {TRAIN_VAL_CASES} training + validation, "
        f"{EXTERNAL_CASES} external). Profile `{facts.profile}`, training seed(s) "
        f"{', '.join(facts.seeds) or '-'}.",
    ]
    if facts.data_kind == "phantom":
        out.append(
            "The cohort is simulated: the paper's clinical numbers are not expected here. What "
            "the study can still show is whether the pipeline reproduces the paper's *design* "
            "(which comparisons it can resolve, with what power) and where the methods "
            "agree or disagree on data whose classes are known by construction."
        )
    if len(facts.seeds) < 2:
        out.append(
            "One training seed: differences include training noise that a single seed cannot "
            "separate from the methods' effects (use `--seeds`)."
        )
    if np.isfinite(facts.mdd_accuracy):
        out.append(
            f"With {facts.n_external} external cases the smallest accuracy difference the "
            f"paired McNemar test detects with 80 % power is {100 * facts.mdd_accuracy:.1f} "
            "points; the paper's effects are 1-8 points."
        )
    return out


def findings_markdown(facts: StudyFacts, f: Findings) -> str:
    """``compare/findings.md``: the data, the claims with verdicts, the key contrasts that are
    significant, the sanity flags and the centers where augmentation hurts."""
    lines = [f"# Findings of study `{facts.study_id}`", "", *data_sentences(facts), ""]
    lines += ["## The paper's claims", "", _markdown(f.claims[["claim", "verdict", "why"]]), ""]
    counts = f.claims["verdict"].value_counts()
    lines.append(
        "Verdicts: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS) + " "
        f"({'seed-combined tests' if f.seed_combined else 'paired tests on one training seed'};"
        ' rules in docs/statistics.md, "Findings").'
    )
    sig = f.key_contrasts[f.key_contrasts["significant"]]
    lines += ["", "## Key contrasts", ""]
    if sig.empty:
        lines.append("No key contrast is significant after Benjamini-Hochberg.")
    else:
        lines += [
            f"- {r.contrast}, {r.metric}: {r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
            f" (p_adj {r.p_adj:.3g})"
            for r in sig.itertuples()
        ]
    flagged = f.sanity[f.sanity["flags"] != ""]
    lines += ["", "## Sanity flags", ""]
    lines += [f"- **{r.scenario}**: {r.flags}" for r in flagged.itertuples()] or ["None."]
    if f.per_center is not None:
        hurts = f.per_center[f.per_center["hurts"]]
        lines += ["", "## External centers", ""]
        lines += [
            f"- {r.scenario} at center {r.center} ({r.metric}): {r.diff_vs_O:+.3f} vs O "
            f"[{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}]"
            for r in hurts.itertuples()
        ]
        if hurts.empty:
            lines.append("No scenario is significantly worse than O at any single center.")
    if f.unconfirmed is not None and not f.unconfirmed.empty:
        lines += ["", "## Not confirmed across training seeds", ""]
        lines += [
            f"- {r.b} vs {r.a} ({r.metric}): significant for seed(s) "
            f"{r.significant_for_seeds}, seed-combined {r.combined_diff:+.3f} "
            f"(p_adj {r.combined_p_adj:.3g})"
            for r in f.unconfirmed.itertuples()
        ]
    return "\n".join(lines) + "\n"


def _markdown(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join(str(v).replace("|", "/") for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([head, rule, *body])
