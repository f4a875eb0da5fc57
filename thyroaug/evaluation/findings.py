"""What a study found: its claims table (``claims``), key contrasts, sanity flags and
per-center results, and the findings in words. DataFrames in, DataFrames out (the compare job
writes and logs them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from thyroaug.contract import CLASSES
from thyroaug.evaluation.bootstrap import bootstrap, summarize
from thyroaug.evaluation.claims import (
    HEADLINE,
    NEAR_ONE_CLASS,
    VERDICTS,
    Contrasts,
    Evidence,
    claims_table,
    key_of,
)
from thyroaug.evaluation.fdr import benjamini_hochberg_within
from thyroaug.evaluation.metrics import compute_metrics
from thyroaug.evaluation.paired import paired_bootstrap, seed_combined_test

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


SIZE_FLAG = "size confound"


def size_sentence(sanity: pd.DataFrame) -> str:
    """The size confound in one sentence: which scenarios trained on how many images vs O."""
    if "O" not in set(sanity["scenario"]):
        return ""
    n_o = int(sanity.loc[sanity["scenario"] == "O", "n_train"].iloc[0])
    other = sanity[(sanity["scenario"] != "O") & (sanity["n_train"] > 0)]
    other = other[other["n_train"] != n_o]
    if other.empty or not n_o:
        return ""
    groups = [
        f"{n} images for {', '.join(part['scenario'])}"
        for n, part in other.groupby("n_train", sort=True)
    ]
    return (
        f"Training-set sizes differ from O's {n_o} cases ({'; '.join(groups)}): a difference "
        "from O mixes what the added images are with how many there are."
    )


def serious_flags(flags: str) -> str:
    """A scenario's flags without the size confound (which ``size_sentence`` says once)."""
    return "; ".join(f for f in flags.split("; ") if f and not f.startswith(SIZE_FLAG))


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
            flags.append(f"{SIZE_FLAG} ({what}: {n_train} training images vs O's {n_o})")
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
            interval = summarize(bootstrap(yc, pc, n_resamples, seed, [key_of(m) for m in metrics]))
            diffs = None
            if base is not None and scenario != "O":
                diffs = paired_bootstrap(yc, base[pick], pc, list(metrics), n_resamples, seed)
                diffs = diffs.set_index("metric")
            for metric in metrics:
                key = key_of(metric)
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
    lines += ["", "## Sanity flags", ""]
    serious = [(r.scenario, serious_flags(r.flags)) for r in f.sanity.itertuples()]
    lines += [f"- **{name}**: {text}" for name, text in serious if text] or ["No other flag."]
    if size_sentence(f.sanity):
        lines += ["", size_sentence(f.sanity)]
    if f.per_center is not None:
        pc = f.per_center
        hurts = pc[pc["hurts"] & pc["scenario"].str.startswith("O+")]  # augmentation of O
        lines += ["", "## External centers", ""]
        lines += [
            f"- {r.scenario} at center {r.center} ({r.metric}): {r.diff_vs_O:+.3f} vs O "
            f"[{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}]"
            for r in hurts.itertuples()
        ]
        if hurts.empty:
            lines.append(
                "No augmented scenario (O+...) is significantly worse than O at any center."
            )
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
