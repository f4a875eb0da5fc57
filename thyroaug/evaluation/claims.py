"""The paper's claims judged on a study's contrasts: verdict rules and the claims table.

A *contrast* is ``metric(b) - metric(a)`` on the same external cases with its 95 % interval,
standard error and p-value: from the paired tests (one training seed) or the seed-combined tests
(several seeds). For a claim that b beats a by the paper's effect ``e > 0``, with
``mdd = (z_0.975 + z_0.80) * se`` the difference this design detects with 80 % power
(docs/statistics.md, "Findings"):

- ``reproduced``: the difference is positive and significant after Benjamini-Hochberg;
- ``contradicted``: significant the other way, or the interval lies below ``e`` although the
  design could detect ``e`` (``mdd <= e``): our data exclude the paper's effect;
- ``not testable``: ``mdd > e`` and nothing significant (the design cannot see the paper's
  effect), or a scenario the claim needs predicts one class (its numbers are not a result);
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
from thyroaug.evaluation.paper_values import TABLE2

VERDICTS: tuple[str, ...] = (
    "reproduced",
    "contradicted",
    "inconclusive",
    "not testable",
    "not run",
)
CLAIM_COLUMNS: tuple[str, ...] = ("claim", "paper", "ours", "ci_low", "ci_high", "verdict", "why")
HEADLINE: tuple[str, ...] = ("accuracy", "macro_f1", "macro_auc")
TABLE2_KEY = {"accuracy": "accuracy", "macro_f1": "f1_macro", "macro_auc": "auc_macro"}
"""Contrast metric name -> ``compute_metrics`` key (class-wise contrasts use the key itself)."""
NEAR_ONE_CLASS = 0.95
"""A classifier that gives one class to this share of the external cases predicts one class."""


def detectable(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The difference a two-sided test at ``alpha`` detects with ``power``, given its SE."""
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * se)


def key_of(metric: str) -> str:
    """The ``compute_metrics`` key of a contrast metric name."""
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
    return TABLE2[b][key_of(metric)] - TABLE2[a][key_of(metric)]


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
    key = key_of(metric)
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
    present = [s for s in ev.values if s not in weak and s not in ev.one_class]
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
    why = (
        f"of the other {len(present)} scenarios (one-class predictors left out), the share "
        "significantly better: " + ", ".join(f"{w} {s:.0%}" for w, s in zip(weak, shares))
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
            if top["method"] != method and len(mine):
                why += f" ({method} {float(mine.iloc[0]):.3g})"
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
