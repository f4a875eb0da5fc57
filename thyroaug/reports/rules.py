"""Offline rule-based reading of thyroid scan reports into ``Findings`` (``extract_findings``).

Step 3 of the reader (one answerer per question); steps 1 and 2 are ``reports.lexicon`` and
``reports.sentences``. The three steps: ``docs/data.md``, "Reports -> findings -> prompts".
"""

from __future__ import annotations

import re

from thyroaug.reports.findings import Findings
from thyroaug.reports.sentences import Sentence, nearest_head, negated, split_sentences

UPTAKE_PERCENT_BINS: dict[str, tuple[float, float]] = {
    "very low": (0.05, 0.3),
    "low": (0.3, 0.6),
    "normal": (0.6, 2.5),
    "increased": (2.5, 8.0),
    "intense": (8.0, 30.0),
}
"""20-minute pertechnetate uptake (% of injected activity) read as each uptake word: [low, high)."""


def uptake_from_percent(percent: float) -> str:
    """The uptake word for a pertechnetate uptake percentage (``UPTAKE_PERCENT_BINS``)."""
    for word, (_low, high) in UPTAKE_PERCENT_BINS.items():
        if percent < high:
            return word
    return "intense"


_WORD_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "single": 1, "solitary": 1, "a": 1, "an": 1, "isolated": 1,
    "multiple": 3, "several": 3, "numerous": 3, "many": 3, "various": 3, "few": 3, "couple": 2,
    "pair": 2,
}  # fmt: skip
_REFERENCES = {"the", "this", "that", "these", "those", "both", "each", "its", "their", "latter"}
_NODULE_ADJ = {
    "kd_hot", "kd_cold", "kd_warm", "kd_mixed", "sz_small", "small", "large", "tiny", "larger",
    "smaller", "dominant", "discrete", "palpable", "further", "additional", "other", "new",
    "separate", "rounded", "round", "focal", "definite", "lv_visible", "and", "or", "of",
    "sizeable", "lv_increased", "lv_low", "lv_intense",
}  # fmt: skip
_ADDITION = {"also", "another", "additional", "further", "second", "separate"}

_CONCLUSION_CUE = re.compile(
    r"\b(?:consistent with|in keeping with|suggestive of|compatible with|diagnostic of|typical "
    r"of|characteristic of|features of|likely|probably|represents?|favor\w*|appearances?|"
    r"impression|conclusion)\b"
)
_PERCENT = re.compile(
    r"(?:uptake|trapping)\b[^%\n]{0,40}?(?<![\d.])(\d+(?:\.\d+)?)\s*%", re.IGNORECASE
)

_LEVEL_TO = {
    # level token -> (uptake, background, salivary)
    "lv_absent": ("absent", "low", "faint"),
    "lv_verylow": ("very low", "low", "faint"),
    "lv_low": ("low", "low", "faint"),
    "lv_normal": ("normal", "normal", "normal"),
    "lv_increased": ("increased", "high", "prominent"),
    "lv_intense": ("intense", "high", "prominent"),
    "lv_visible": (None, None, "normal"),
    "lv_notseen": (None, None, "faint"),
}
_SIZE_TO = {
    "sz_small": "small",
    "sz_normal": "normal",
    "sz_mild": "mildly enlarged",
    "sz_enlarged": "enlarged",
    "sz_marked": "markedly enlarged",
}
_DIST_TO = {
    "ds_homo": "homogeneous",
    "ds_mild": "mildly heterogeneous",
    "ds_hetero": "heterogeneous",
    "ds_patchy": "patchy",
}
_DX_TO = {"dx_dg": "DG", "dx_ng": "NG", "dx_nl": "NL", "dx_ti": "TI"}
_SIDE_WORDS = {"right", "left", "isthmus", "bilateral", "bilaterally", "both", "each"}
_SIDE_STOP = {"with", "but", "whereas", "while", "remainder", "rest", "remaining", "suppression"}


def _levels(body: list[Sentence]) -> tuple[str | None, str | None, str | None]:
    """Uptake, background and salivary answers from level words and their nearest heads."""
    uptake = background = None
    salivary: list[str] = []
    for s in body:
        if s.section == "recommendation":
            continue
        for i, tok in enumerate(s.tokens):
            if tok not in _LEVEL_TO or (
                tok not in ("lv_absent", "lv_notseen") and negated(s.tokens, i)
            ):
                continue
            head = nearest_head(s.tokens, i)
            up, bg, sal = _LEVEL_TO[tok]
            if head == "uptake" or (
                head == "gland" and tok not in ("lv_normal", "lv_visible", "lv_notseen")
            ):
                uptake = uptake or up
            elif head == "background":
                background = background or bg
            elif head == "salivary" and sal:
                salivary.append(sal)
    sal_value = next((v for v in salivary if v != "normal"), salivary[0] if salivary else None)
    return uptake, background, sal_value


def _first_attribute(body: list[Sentence], table: dict[str, str], exclude: set[str]) -> str | None:
    for s in body:
        if s.section == "recommendation":
            continue
        for i, tok in enumerate(s.tokens):
            if (
                tok in table
                and not negated(s.tokens, i)
                and nearest_head(s.tokens, i) not in exclude
            ):
                return table[tok]
    return None


def _quantity(tokens: list[str], i: int) -> int | str:
    """Count stated for the nodule mention at ``i``: a number, "ref" or "plural"."""
    j = i - 1
    while j >= 0:
        if tokens[j] in ("mm", "cm") and j > 0 and re.fullmatch(r"\d+(?:\.\d+)?", tokens[j - 1]):
            j -= 2  # "a 12 mm nodule": the number is a size, not a count
        elif tokens[j] in _NODULE_ADJ:
            j -= 1
        else:
            break
    if j >= 0:
        t = tokens[j]
        if t.isdigit():
            return int(t)
        if t in _WORD_NUMBERS:
            return _WORD_NUMBERS[t]
        if t in _REFERENCES:
            return "ref"
    # forward: "nodules: 2", "nodules x 2", "nodules (2)"
    ahead = tokens[i + 1 : i + 4]
    if ahead and ahead[0] in (":", "x", "("):
        for t in ahead[1:]:
            if t.isdigit():
                return int(t)
            if t in _WORD_NUMBERS and t not in ("a", "an"):
                return _WORD_NUMBERS[t]
    return "plural" if tokens[i] == "nodules" else 1


def _nodules(body: list[Sentence]) -> tuple[int | None, str | None, str | None]:
    """Nodule count, kind and side from the nodule mentions (with negation and hints).

    Sentence by sentence: the non-negated mentions (or, right after a positive sentence, one that
    starts "It ..." / "They ...") add their stated count, kinds and sides; then the totals and the
    diagnosis hints ("multinodular", "toxic adenoma") give the answer.
    """
    running = 0
    negated_seen = False
    kinds: list[str] = []
    sides: set[str] = set()
    hints = {t for s in body for t in s.tokens if t.startswith("hint_")}
    previous_positive = False
    for s in body:
        if s.section == "recommendation":
            previous_positive = False
            continue
        toks = s.tokens
        mentions = [i for i, t in enumerate(toks) if t in ("nodule", "nodules")]
        positive = [i for i in mentions if not negated(toks, i)]
        negated_seen = negated_seen or len(positive) < len(mentions)
        continuation = (
            previous_positive
            and not mentions
            and toks[0] in ("it", "they", "both", "these", "this", "all")
        )
        if not positive and not continuation:
            previous_positive = False
            continue
        previous_positive = True
        total = _stated_count(toks, positive)
        if total:
            if running and any(t in _ADDITION for t in toks):
                running += total
            elif s.section != "impression" or not running:
                running = max(running, total)
        kinds += _stated_kinds(toks, mentions, positive)
        sides |= _stated_sides(toks, positive, continuation)
    return _nodule_answer(running, kinds, sides, hints, negated_seen)


def _stated_count(toks: list[str], positive: list[int]) -> int:
    """Nodules one sentence states (0 if it only refers back): "multiple" alone counts 3."""
    counts = []
    plural = False
    for i in positive:
        q = _quantity(toks, i)
        if q == "plural":
            plural = True
        elif q != "ref":
            window = toks[i + 1 : i + 8]
            counts.append(2 if q == 1 and "each" in window and "lobe" in window else q)
    return sum(counts) if counts else (3 if plural else 0)


def _stated_kinds(toks: list[str], mentions: list[int], positive: list[int]) -> list[str]:
    """Nodule kinds (hot / cold / warm / mixed) of one sentence, skipping negated nodules'."""
    kinds = []
    for j, t in enumerate(toks):
        if t.startswith("kd_") and not negated(toks, j):
            following = next((k for k in mentions if k > j), None)
            if following is not None and following - j <= 4 and following not in positive:
                continue
            kinds.append(t[3:])
    return kinds


def _stated_sides(toks: list[str], positive: list[int], continuation: bool) -> set[str]:
    """Sides named near each positive mention (after it if any, else just before it)."""
    sides: set[str] = set()
    spans = [(0, len(toks))] if continuation else []
    for n, i in enumerate(positive):
        nxt = positive[n + 1] if n + 1 < len(positive) else len(toks)
        stop = min(nxt, i + 13)
        stop = next((k for k in range(i + 1, stop) if toks[k] in _SIDE_STOP), stop)
        if any(t in _SIDE_WORDS for t in toks[i + 1 : stop]):
            spans.append((i + 1, stop))
        else:
            spans.append((max(0, i - 6), i))
    for lo, hi in spans:
        window = toks[lo:hi]
        for k, t in enumerate(window):
            if t in ("right", "left", "isthmus"):
                sides.add(t)
            elif t in ("bilateral", "bilaterally") or (
                t in ("both", "each")
                and k + 1 < len(window)
                and window[k + 1] in ("lobes", "lobe", "sides", "side")
            ):
                sides.add("bilateral")
    return sides


def _nodule_answer(
    running: int, kinds: list[str], sides: set[str], hints: set[str], negated_seen: bool
) -> tuple[int | None, str | None, str | None]:
    """The (count, kind, side) answer from the report's totals, hints and negations."""
    count: int | None = min(running, 3) if running else None
    if count is None:
        if "hint_multi" in hints:
            count = 3
        elif "hint_hot1" in hints:
            count = 1
            kinds = kinds or ["hot"]
        elif negated_seen:
            return 0, None, None
    if count is None:
        return None, None, None
    kind = None
    unique = set(kinds)
    if "mixed" in unique or {"hot", "cold"} <= unique:
        kind = "mixed"
    elif kinds:
        kind = kinds[0]
    side = None
    if "bilateral" in sides or {"right", "left"} <= sides:
        side = "bilateral"
    elif "right" in sides:
        side = "right"
    elif "left" in sides:
        side = "left"
    elif "isthmus" in sides:
        side = "isthmus"
    return count, kind, side


def _pyramidal(body: list[Sentence]) -> bool | None:
    for s in body:
        for i, tok in enumerate(s.tokens):
            if tok == "pyramidal":
                return not negated(s.tokens, i)
    return None


def _first_dx(sentences: list[Sentence]) -> str | None:
    for s in sentences:
        for i, tok in enumerate(s.tokens):
            if tok in _DX_TO and not negated(s.tokens, i):
                return _DX_TO[tok]
    return None


def _impression(body: list[Sentence]) -> str | None:
    section = [s for s in body if s.section == "impression"]
    if section:
        found = _first_dx(section)
        if found:
            return found
        for s in section:  # "Impression: solitary cold nodule, right lobe"
            if any(
                t in ("nodule", "nodules") and not negated(s.tokens, i)
                for i, t in enumerate(s.tokens)
            ):
                return "NG"
        if any(s.tokens[:1] == ["lv_normal"] and len(s.tokens) <= 2 for s in section):
            return "NL"
    cue = [s for s in body if s.section != "recommendation" and _CONCLUSION_CUE.search(s.raw)]
    found = _first_dx(list(reversed(cue))) if not section else None
    if found:
        return found
    return _first_dx([s for s in body if s.section != "recommendation"])


def extract_findings(report: str) -> Findings:
    """Answer ``QUESTIONS`` for a free-text report with offline rules.

    The report is normalised (British spelling, abbreviations such as "rt lobe", "bkg", "SGs",
    "MNG", arrows, synonyms such as "hypofunctioning" -> cold, "mottled" -> patchy), split into
    sections and sentences (clinical history, technique, salutations and signatures are ignored;
    the IMPRESSION / conclusion part decides the diagnosis, referral questions never do), and each
    value word is attributed to the thing it describes (thyroid uptake, background, salivary glands,
    a nodule) by its nearest head noun. Negations ("no focal nodules", "pyramidal lobe not seen",
    "Graves' disease is unlikely", "thyroiditis rather than Graves'") are honoured. Word numbers and
    "multiple/several" are read; three or more nodules give 3.

    Returns:
        The findings stated by the report (None where it says nothing).
    """
    if not report or not report.strip():
        return Findings()
    body = split_sentences(report)
    uptake, background, salivary = _levels(body)
    if uptake is None:
        match = _PERCENT.search(re.sub(r"\([^)]*\)", " ", report))
        if match:
            uptake = uptake_from_percent(float(match.group(1)))
    nodules, kind, side = _nodules(body)
    return Findings(
        gland_size=_first_attribute(
            body, _SIZE_TO, {"nodule", "salivary", "pyramidal", "background"}
        ),  # type: ignore[arg-type]
        uptake=uptake,  # type: ignore[arg-type]
        distribution=_first_attribute(body, _DIST_TO, {"salivary", "background"}),  # type: ignore[arg-type]
        nodules=nodules,
        nodule_kind=kind,  # type: ignore[arg-type]
        nodule_side=side,  # type: ignore[arg-type]
        background=background,  # type: ignore[arg-type]
        salivary=salivary,  # type: ignore[arg-type]
        pyramidal_lobe=_pyramidal(body),
        impression=_impression(body),  # type: ignore[arg-type]
    )
