"""Splitting a report into sectioned token sentences, and the scope rules read over them.

Owns step 2 of the rule-based reader (section headers, history / technique / letter lines dropped,
recommendations kept apart: ``split_sentences``) and the two scope rules every answerer uses:
NegEx-style negation (``negated``) and attribution of a value word to its nearest head noun
(``nearest_head``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from thyroaug.reports.lexicon import normalize

_PRE_NEG = {
    "no", "not", "without", "neither", "nor", "absence", "rather_than", "free_of",
    "negative_for", "exclude", "excluding",
}  # fmt: skip
_POST_NEG = {"lv_notseen", "lv_absent", "none", "unlikely", "excluded", "less_likely", "ruled_out"}
_HARD_BOUNDARY = {
    "but", "however", "although", "though", "whereas", "while", "except", "apart", "aside",
    "which", "with", "is", "are", "was", "were", "shows", "show", "demonstrates", "there", ";",
    "(", ")",
}  # fmt: skip
_CLAUSE_BOUNDARY = {",", "with", "and", "but", "whereas", "while", ";", "(", ")", ":"}

_HEAD_GROUPS = {
    "uptake": {
        "uptake", "trapping", "activity", "tracer", "radiotracer", "concentration", "concentrates",
        "accumulation", "function", "pertechnetate", "counts", "avidity", "traps",
    },
    "gland": {"thyroid", "gland", "lobes", "lobe", "goiter"},
    "background": {"background"},
    "salivary": {"salivary"},
    "nodule": {"nodule", "nodules"},
    "pyramidal": {"pyramidal"},
}  # fmt: skip
_HEAD_OF = {word: group for group, words in _HEAD_GROUPS.items() for word in words}

_SECTION_HEADERS = {
    "history": (
        "history", "clinical history", "clinical details", "clinical information", "clinical",
        "clinical indication", "indication", "indications", "referral", "reason for referral",
        "reason for study", "reason for exam", "hx", "ci", "question", "clinical question",
        "request", "presenting complaint",
    ),
    "technique": (
        "technique", "procedure", "method", "methods", "protocol", "acquisition",
        "radiopharmaceutical", "examination", "exam", "study", "tracer", "dose", "imaging",
    ),
    "findings": (
        "findings", "report", "result", "results", "description", "scan", "scintigraphy",
        "thyroid scan", "observations", "scan findings", "tc scan", "technetium scan",
        "pertechnetate scan", "thyroid scintigraphy", "nm thyroid scan",
    ),
    "impression": (
        "impression", "impressions", "conclusion", "conclusions", "opinion", "summary",
        "diagnosis", "dx", "imp", "impr", "interpretation", "comment", "comments",
        "final diagnosis", "scan diagnosis", "in summary", "in conclusion", "overall",
    ),
    "recommendation": ("recommendation", "recommendations", "advice", "suggestion", "plan"),
}  # fmt: skip
_HEADER_OF = {h: kind for kind, heads in _SECTION_HEADERS.items() for h in heads}
_HEADER_RE = re.compile(r"^[-*\u2022]?\s*([a-z][a-z ]{0,30}?)\s*(?::|-{1,2}>|=>)\s*(.*)$")
_ARROW_RE = re.compile(r"^\s*(?:=>|->)\s*(.*)$")
_INLINE_IMPRESSION = re.compile(
    r"^\s*(?:(?:in summary|in conclusion|to summari[sz]e)\b[:,]?|(?:overall|conclusion|"
    r"impression|summary)\s*[:,])\s*"
)
_HISTORY_CUE = re.compile(
    r"\b(?:history|referr\w*|presents? with|presenting with|complains? of|year-old|yo|"
    r"thank you|known case)\b"
)
_TECHNIQUE_CUE = re.compile(
    r"\b(?:mbq|mci|injection|injected|administration|administered|intravenous\w*|pinhole|"
    r"collimator|acquired|obtained|performed)\b"
)
_RECOMMEND_CUE = re.compile(
    r"^\s*(?:recommend|suggest|advise|please|correlat|consider|further|follow|clinical "
    r"correlation|ultrasound correlation|us correlation|fna)"
)
_CLOSING = re.compile(r"^\s*(?:yours sincerely|yours faithfully|kind regards|best wishes|regards)")
_SENTENCE_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|;|!")
_TOKEN = re.compile(r"[a-z_]+(?:'[a-z]+)?|\d+(?:\.\d+)?%?|[,:;()]")
_FINDING_TOKEN = re.compile(r"\b(?:lv|sz|ds|kd|dx|hint)_|\bnodules?\b|\bpyramidal\b")


@dataclass
class Sentence:
    """One normalised sentence: its tokens, the report section it is in, and its text."""

    tokens: list[str]
    section: str  # findings | impression | recommendation
    raw: str


def split_sentences(report: str) -> list[Sentence]:
    """Split into sentences tagged with their section; history, technique and letters dropped.

    Section headers ("IMPRESSION:", "Hx:", "=>") are recognised at the start of a line or of a
    sentence. A content section (findings / impression / recommendation) lasts until the next
    header; a history or technique header lasts to the end of its line.
    """
    out: list[Sentence] = []
    section = "findings"
    for raw_line in report.splitlines():
        low = raw_line.strip().lower()
        if not low or re.match(r"^dear\b", low):
            continue
        if _CLOSING.match(low):
            break
        scope = None  # "history" / "technique" until the end of this line
        for chunk in _SENTENCE_SPLIT.split(normalize(raw_line)):
            part = chunk.strip()
            arrow = _ARROW_RE.match(part)
            header = _HEADER_RE.match(part)
            if arrow:
                section, scope, part = "impression", None, arrow.group(1)
            elif header and header.group(1).strip() in _HEADER_OF:
                kind = _HEADER_OF[header.group(1).strip()]
                part = header.group(2)
                if kind in ("history", "technique"):
                    scope = kind
                else:
                    section, scope = kind, None
            if not part or scope == "history":
                continue
            if scope == "technique" and not _FINDING_TOKEN.search(part):
                continue
            sentence_section = section
            if _INLINE_IMPRESSION.match(part) and section != "recommendation":
                section = sentence_section = "impression"
                part = _INLINE_IMPRESSION.sub("", part, count=1)
            if _HISTORY_CUE.search(part):
                continue
            if _TECHNIQUE_CUE.search(part) and not _FINDING_TOKEN.search(part):
                continue
            if _RECOMMEND_CUE.match(part):
                sentence_section = "recommendation"
            tokens = _TOKEN.findall(part)
            if tokens:
                out.append(Sentence(tokens, sentence_section, part))
    return out


def negated(tokens: list[str], i: int) -> bool:
    """NegEx-style: a negation cue shortly before (same scope) or a post-cue shortly after."""
    has_or_after = {j for j, t in enumerate(tokens) if t in ("or", "nor")}
    for j in range(i - 1, max(-1, i - 7), -1):
        t = tokens[j]
        if t in _PRE_NEG:
            return True
        if t in _HARD_BOUNDARY or t == "and":
            break
        if t == "," and not any(k > j for k in has_or_after):
            break
    for j in range(i + 1, min(len(tokens), i + 4)):
        t = tokens[j]
        if t in _POST_NEG or (t == "no" and tokens[j - 1] == ":"):
            return True
        if t in (";", ",", "with", "and", "but") or t in _HEAD_OF:
            break
    return False


def nearest_head(tokens: list[str], i: int) -> str | None:
    """The head group nearest to token ``i`` in its clause (else sentence); ties go forward."""

    def search(lo: int, hi: int) -> str | None:
        best, best_d = None, 1e9
        for j in range(lo, hi):
            group = _HEAD_OF.get(tokens[j])
            if group is None or j == i:
                continue
            d = abs(j - i) - (0.5 if j > i else 0.0)
            if d < best_d:
                best, best_d = group, d
        return best

    lo = i
    while lo > 0 and tokens[lo - 1] not in _CLAUSE_BOUNDARY:
        lo -= 1
    hi = i + 1
    while hi < len(tokens) and tokens[hi] not in _CLAUSE_BOUNDARY:
        hi += 1
    found = search(lo, hi)
    if found:
        return found
    # a bare adjective clause: "with normal, homogeneous uptake" (the noun follows) unless that
    # noun has its own predicate ("uptake intense, homogeneous, bkg low": bkg is taken)
    ahead = next((j for j in range(i + 1, len(tokens)) if tokens[j] in _HEAD_OF), None)
    if ahead is not None:
        k = ahead + 1
        while k < len(tokens) and tokens[k] in ("is", "are", "was", "were", ":"):
            k += 1
        if k >= len(tokens) or not tokens[k].startswith(("lv_", "sz_", "ds_")):
            return _HEAD_OF[tokens[ahead]]
    return next((_HEAD_OF[tokens[j]] for j in range(i - 1, -1, -1) if tokens[j] in _HEAD_OF), None)
