"""Offline rule-based reading of thyroid scan reports into ``Findings`` (``extract_findings``).

The engine behind ``thyroaug.prompts.RuleBasedExtractor``. Steps:

1. Normalise each line: plain characters and arrows, abbreviations ("rt lobe", "bkg", "SGs",
   "MNG", "Tc-99m", "w/o"), British spelling, synonyms, then value phrases become placeholder
   tokens: diagnoses ``dx_*`` (+ ``hint_*`` for "multinodular" / "toxic adenoma"), gland size
   ``sz_*``, distribution ``ds_*``, nodule kinds ``kd_*`` and intensity levels ``lv_*``.
2. Split into sentences with their section: headers at a line or sentence start (IMPRESSION:,
   Conclusion:, Hx:, "=>", "In summary,"). Clinical history, technique lines, salutations,
   signatures and referral sentences are dropped; recommendations are kept apart.
3. Answer each question: a level word belongs to the head noun nearest to it in its clause (thyroid
   uptake, background, salivary glands, nodule, pyramidal lobe); negations follow NegEx (a cue such
   as "no", "without", "rather than" shortly before in the same scope, or "not seen", "unlikely",
   ": none" shortly after); nodules are counted from number words, articles and "multiple"; the
   diagnosis comes from the impression section (else from conclusion sentences, else anywhere).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from thyroaug.findings import Findings

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


def _subs(*pairs: tuple[str, str]) -> tuple[tuple[re.Pattern[str], str], ...]:
    return tuple((re.compile(p), r) for p, r in pairs)


_CHARS = {
    "\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
    "\u00d7": " x ", "\u2191\u2191": " intense ", "\u2191": " increased ",
    "\u2193\u2193": " very low ", "\u2193": " reduced ", "\u2192": " -> ",
}  # fmt: skip

# 1. abbreviations and shorthand (before sentence splitting: they may contain periods)
_ABBREVIATIONS = _subs(
    (r"\((?:normal|ref|reference|nr|n|range|normal range)\b[^)]*\)", " "),
    (r"\bw/o\b", " without "),
    (r"\bw/", " with "),
    (r"\bc/w\b", " consistent with "),
    (r"\bb/g\b|\bbkgd?\b|\bbg\b", " background "),
    (r"\bsgs?\b", " salivary glands "),
    (r"\bpyr\b\.?", " pyramidal "),
    (r"\brt\b\.?", " right "),
    (r"\blt\b\.?", " left "),
    (r"\br\b\.?(?=\s*lobe)", " right "),
    (r"\bl\b\.?(?=\s*lobe)", " left "),
    (r"\bbilat\b\.?", " bilateral "),
    (r"\bisthmic\b", " isthmus "),
    (r"\btmng\b", " toxic multinodular goiter "),
    (r"\bmng\b", " multinodular goiter "),
    (r"\bant\b\.", " anterior "),
    (r"\bnil\b", " none "),
    (r"\bmins?\b", " minutes "),
    (r"\btc-?99m\b|\b99m-?tc\b|\btc99m\b", " technetium "),
    (r"\be\.g\.|\bi\.e\.", " for example "),
    (r"\bdr\.", " dr "),
    (r"\+\+\+", " intense "),
    (r"\+\+", " increased "),
    (r"(?<=[a-z])/(?=[a-z])", " or "),
    (r":\s*-\s*$", ": none"),
    (r":\s*\+\s*$", ": present"),
    (r"\brather than\b", " rather_than "),
    (r"\bless likely\b", " less_likely "),
    (r"\bruled out\b", " ruled_out "),
    (r"\bnot (?:favou?red|likely|suggested)\b", " less_likely "),
    (r"\bgd\b", " graves disease "),
    (r"\bfree of\b", " free_of "),
    (r"\bnegative for\b", " negative_for "),
)
# 2. spelling and synonyms
_SPELLING = _subs(
    (r"goitre", "goiter"),
    (r"visualis", "visualiz"),
    (r"\bfavour", "favor"),
    (r"\bhomogenous\b", "homogeneous"),
    (r"\bgrave'?s'?(?:s)?\b", "graves"),
    (
        r"\bnon-?homogene?ous\b|\binhomogene?ous\b|\bnon-?uniform\b|\buneven(?:ly)?\b",
        "heterogeneous",
    ),
    (r"\bheterogenous\b", "heterogeneous"),
    (r"\binhomogeneity\b", "heterogeneity"),
)
# 3. compound heads (so "background activity" is about background, not thyroid uptake)
_HEADS = _subs(
    (
        r"\b(?:salivary|salivaries|parotids?|submandibulars?)"
        r"(?: and (?:parotid|submandibular|salivary))?(?: glands?)?"
        r"(?: (?:uptake|activity|visualization))?",
        " salivary ",
    ),
    (
        r"\b(?:(?:soft[- ]tissue|blood[- ]pool|extra-?thyroidal) )?background"
        r"(?: (?:activity|uptake|counts))?",
        " background ",
    ),
    (r"\b(?:soft[- ]tissue|blood[- ]pool) (?:activity|uptake)", " background "),
    (r"\bpyramidal(?: lobe)?", " pyramidal "),
    (r"\b(?:thyroid|thyroidal|gland) (uptake|trapping|activity|concentration)\b", r" \1 "),
)
# 4. nodules and their kinds
_NODULE = _subs(
    (
        r"\b(?:focus|area|region|spot|zone) of (?:\w+ ){0,2}?(?:increased|intense|avid|high|"
        r"enhanced|elevated|hot)(?: \w+){0,2}? (?:uptake|activity|accumulation|concentration)",
        " hot nodule ",
    ),
    (
        r"\b(?:foci|areas|regions|spots|zones) of (?:\w+ ){0,2}?(?:increased|intense|avid|high|"
        r"enhanced|elevated|hot)(?: \w+){0,2}? (?:uptake|activity|accumulation|concentration)",
        " hot nodules ",
    ),
    (
        r"\b(?:focus|area|region|spot|zone) of (?:\w+ ){0,2}?(?:reduced|decreased|absent|no|"
        r"diminished|poor|low|lower|little|lacking|photopenic)(?: \w+){0,2}? (?:uptake|activity"
        r"|accumulation|concentration)",
        " cold nodule ",
    ),
    (
        r"\b(?:foci|areas|regions|spots|zones) of (?:\w+ ){0,2}?(?:reduced|decreased|absent|no|"
        r"diminished|poor|low|lower|little|lacking|photopenic)(?: \w+){0,2}? (?:uptake|activity"
        r"|accumulation|concentration)",
        " cold nodules ",
    ),
    (
        r"\b(hot|cold|warm|photopenic|hyperfunctioning|hypofunctioning) "
        r"(?:spot|area|region|focus|defect|zone|lesion)\b",
        r" \1 nodule ",
    ),
    (
        r"\b(hot|cold|warm|photopenic|hyperfunctioning|hypofunctioning) "
        r"(?:spots|areas|regions|foci|defects|zones|lesions)\b",
        r" \1 nodules ",
    ),
    (r"\bfocal (?:abnormalities|lesions)\b|\blesions\b|\bnodularity\b", " nodules "),
    (r"\bfocal (?:abnormality|lesion)\b|\blesion\b", " nodule "),
    (r"\bphotopenic defects?\b|\bdefects\b", " cold nodules "),
    (r"\bdefect\b", " cold nodule "),
    (r"\bmulti-?nodular goiter\b", " multinodular_goiter "),
    (
        r"\bhyper-?functioning\b|\bautonomous(?:ly functioning)?\b|\bhyperactive\b|"
        r"\bhyperfunctional\b|\bhot\b|\btoxic(?= (?:\w+ )?nodules?\b)",
        " kd_hot ",
    ),
    (
        r"\bhypo-?functioning\b|\bnon-?functioning\b|\bphotopenic\b|\bhypoactive\b|\bcold\b",
        " kd_cold ",
    ),
    (r"\bwarm\b|\biso-?functioning\b", " kd_warm "),
    (r"\bmixed\b", " kd_mixed "),
)
# 5. diagnoses (with hints for the nodule questions)
_DIAGNOSES = _subs(
    (r"\b(?:toxic )?multinodular_goiter\b", " dx_ng hint_multi "),
    (r"\bmulti-?nodular\b", " hint_multi "),
    (
        r"\b(?:toxic |non-?toxic |colloid |simple )?nodular (?:goiter|thyroid disease|disease)\b"
        r"|\bnodular thyroid\b",
        " dx_ng ",
    ),
    (r"\b(?:toxic|autonomous|kd_hot) adenoma\b|\bplummer'?s?(?: disease)?\b", " dx_ng hint_hot1 "),
    (r"\b(?:follicular |thyroid )?adenoma\b", " dx_ng "),
    (
        r"\b(?:(?:sub-?acute|painless|silent|post-?partum|destructive|lymphocytic|granulomatous|"
        r"acute|chronic|autoimmune|hashimoto'?s?|de quervain'?s?|viral|amiodarone[- ]induced) )*"
        r"thyroiditis\b|\bde quervain'?s?(?: disease)?\b|\bhashitoxicosis\b",
        " dx_ti ",
    ),
    (r"\bgraves(?: disease)?\b|\bbasedow'?s?(?: disease)?\b", " dx_dg "),
    (
        r"\b(?:toxic )?diffuse (?:toxic |hyperplastic |hyperfunctioning |colloid |simple )?"
        r"(?:goiter|hyperplasia)\b|\bdiffuse hyper-?function(?:ing)?(?: thyroid| gland)?\b",
        " dx_dg ",
    ),
    (
        r"\bnormal(?:ly functioning)? (?:thyroid )?(?:gland )?(?:scan|study|scintigram|"
        r"scintigraphy|examination|exam|appearances?|findings|result)\b"
        r"|\bnormally functioning (?:thyroid )?gland\b|\bnormal thyroid\b(?! uptake| size)",
        " dx_nl ",
    ),
    (
        r"\bno (?:scintigraphic |significant |definite |obvious )?abnormalit(?:y|ies)\b"
        r"|\bunremarkable (?:thyroid )?(?:scan|study|scintigra\w*)\b"
        r"|\b(?:scan|study|scintigra\w*|examination)(?: is| was| appears)?"
        r"(?: entirely| completely)? (?:normal|unremarkable)\b",
        " dx_nl ",
    ),
)
# 6. gland size
_SIZE = _subs(
    (r"\bnot (?:\w+ )?enlarged\b", " sz_normal "),
    (r"\bsize(?: is)?(?: within normal limits| normal)\b|\bsize\s*:\s*normal\b", " sz_normal "),
    (
        r"\bnormal(?:-| )?sized?\b|\bnormal in (?:size|dimensions)\b|\bnormal dimensions\b",
        " sz_normal ",
    ),
    (
        r"\b(?:markedly|grossly|massively|considerably|greatly|significantly|severely|hugely|very|"
        r"substantially) enlarged\b|\b(?:marked|gross|massive|considerable|significant|"
        r"substantial) (?:\w+ )?enlargement\b",
        " sz_marked ",
    ),
    (
        r"\b(?:mildly|slightly|minimally|borderline|marginally|somewhat) enlarged\b"
        r"|\b(?:mild|slight|minimal|borderline) (?:\w+ )?enlargement\b",
        " sz_mild ",
    ),
    (
        r"\b(?:moderately |diffusely )?enlarged\b|\b(?:moderate |diffuse )?enlargement\b"
        r"|\bincreased in size\b|\bthyromegaly\b|\bbulky\b",
        " sz_enlarged ",
    ),
    (
        r"\bsmall(?:er than (?:normal|usual|expected))?\b|\batrophic\b|\breduced in size\b"
        r"|\bhypoplastic\b",
        " sz_small ",
    ),
)
# 7. distribution
_DISTRIBUTION = _subs(
    (r"\bnot (?:entirely |completely |quite )homogeneous\b", " ds_mild "),
    (r"\bnot homogeneous\b", " ds_hetero "),
    (r"\bpatch(?:y|ily)\b|\bmottled\b|\bblotchy\b", " ds_patchy "),
    (
        r"\b(?:mildly|slightly|subtly|minimally|somewhat|mild|slight|subtle) "
        r"(?:heterogeneous(?:ly)?|heterogeneity)\b",
        " ds_mild ",
    ),
    (r"\bheterogeneous(?:ly)?\b|\bheterogeneity\b|\birregular(?:ly)?\b|\bcoarse\b", " ds_hetero "),
    (r"\bhomogeneous(?:ly)?\b|\buniform(?:ly)?\b|\bevenly\b", " ds_homo "),
)
# 8. levels (uptake / background / salivary intensity words)
_LEVELS = _subs(
    (r"\b(uptake|trapping)\s*:\s*none\b", r"\1 : lv_absent"),
    (
        r"\b(?:thyroid|gland)(?: \w+){0,2}?(?:\s*:)? (?:is |was )?not "
        r"(?:seen|visualized|identified|demonstrated|visible)\b"
        r"|\bnon-?visualization of the (?:thyroid|gland)\b",
        " lv_absent uptake ",
    ),
    (
        r"\bno (?:appreciable |significant |discernible |definite |visible |measurable |"
        r"convincing |obvious )?(?:(?:thyroid|tracer|radiotracer) )*(?:uptake|trapping|activity|"
        r"concentration)\b",
        " lv_absent uptake ",
    ),
    (
        r"\bnot (?:well |clearly |definitely )?(?:seen|visualized|identified|demonstrated|"
        r"visible|detected)\b",
        " lv_notseen ",
    ),
    (
        r"\bvery (?:low|faint(?:ly)?|poor(?:ly)?|weak(?:ly)?|reduced|little)\b|\b(?:markedly|"
        r"severely|significantly|grossly|profoundly|substantially|considerably|greatly) "
        r"(?:reduced|decreased|diminished|suppressed)\b|\bminimal\b|\bbarely\b|\bhardly\b"
        r"|\b(?:virtually|nearly|almost) absent\b|\bscarcely\b",
        " lv_verylow ",
    ),
    (r"\babsent\b", " lv_absent "),
    (
        r"\b(?:markedly|strongly|greatly|significantly|considerably|very|much|highly) "
        r"(?:increased|elevated|raised|high|avid)\b|\bintense(?:ly)?\b|\bavid(?:ly)?\b"
        r"|\bvery high\b",
        " lv_intense ",
    ),
    (
        r"\b(?:mildly |slightly |moderately )?(?:increased|elevated|raised|high|enhanced|"
        r"prominent|conspicuous)\b",
        " lv_increased ",
    ),
    (
        r"\b(?:mildly |slightly |moderately )?(?:low|reduced|decreased|diminished|faint(?:ly)?|"
        r"poor(?:ly)?|weak(?:ly)?|suppressed|clean)\b|\blower than normal\b|\blittle\b",
        " lv_low ",
    ),
    (
        r"\bwithin normal limits\b|\bnormal(?:ly)?\b|\bphysiological(?:ly)?\b|\busual\b",
        " lv_normal ",
    ),
    (
        r"\b(?:clearly |well )?(?:visible|seen|visualized|identified|noted|demonstrated|present"
        r"|depicted)\b",
        " lv_visible ",
    ),
)

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
_CONCLUSION_CUE = re.compile(
    r"\b(?:consistent with|in keeping with|suggestive of|compatible with|diagnostic of|typical "
    r"of|characteristic of|features of|likely|probably|represents?|favor\w*|appearances?|"
    r"impression|conclusion)\b"
)
_CLOSING = re.compile(r"^\s*(?:yours sincerely|yours faithfully|kind regards|best wishes|regards)")
_SENTENCE_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|;|!")
_TOKEN = re.compile(r"[a-z_]+(?:'[a-z]+)?|\d+(?:\.\d+)?%?|[,:;()]")
_PERCENT = re.compile(
    r"(?:uptake|trapping)\b[^%\n]{0,40}?(?<![\d.])(\d+(?:\.\d+)?)\s*%", re.IGNORECASE
)
_FINDING_TOKEN = re.compile(r"\b(?:lv|sz|ds|kd|dx|hint)_|\bnodules?\b|\bpyramidal\b")


@dataclass
class _Sentence:
    tokens: list[str]
    section: str  # findings | impression | recommendation
    raw: str


def _apply(text: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    return text


def _normalize(text: str) -> str:
    """Lower case, plain characters, abbreviations expanded, value phrases as placeholder tokens."""
    for char, repl in _CHARS.items():
        text = text.replace(char, repl)
    text = unicodedata.normalize("NFKC", text).lower()
    for rules in (
        _ABBREVIATIONS, _SPELLING, _HEADS, _NODULE, _DIAGNOSES, _SIZE, _DISTRIBUTION, _LEVELS
    ):  # fmt: skip
        text = re.sub(r"[ \t]+", " ", _apply(text, rules))
    return text.strip()


def _sentences(report: str) -> list[_Sentence]:
    """Split into sentences tagged with their section; history, technique and letters dropped.

    Section headers ("IMPRESSION:", "Hx:", "=>") are recognised at the start of a line or of a
    sentence. A content section (findings / impression / recommendation) lasts until the next
    header; a history or technique header lasts to the end of its line.
    """
    out: list[_Sentence] = []
    section = "findings"
    for raw_line in report.splitlines():
        low = raw_line.strip().lower()
        if not low or re.match(r"^dear\b", low):
            continue
        if _CLOSING.match(low):
            break
        scope = None  # "history" / "technique" until the end of this line
        for chunk in _SENTENCE_SPLIT.split(_normalize(raw_line)):
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
                out.append(_Sentence(tokens, sentence_section, part))
    return out


def _negated(tokens: list[str], i: int) -> bool:
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


def _nearest_head(tokens: list[str], i: int) -> str | None:
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


def _levels(body: list[_Sentence]) -> tuple[str | None, str | None, str | None]:
    """Uptake, background and salivary answers from level words and their nearest heads."""
    uptake = background = None
    salivary: list[str] = []
    for s in body:
        if s.section == "recommendation":
            continue
        for i, tok in enumerate(s.tokens):
            if tok not in _LEVEL_TO or (
                tok not in ("lv_absent", "lv_notseen") and _negated(s.tokens, i)
            ):
                continue
            head = _nearest_head(s.tokens, i)
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


def _first_attribute(body: list[_Sentence], table: dict[str, str], exclude: set[str]) -> str | None:
    for s in body:
        if s.section == "recommendation":
            continue
        for i, tok in enumerate(s.tokens):
            if (
                tok in table
                and not _negated(s.tokens, i)
                and _nearest_head(s.tokens, i) not in exclude
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


def _nodules(body: list[_Sentence]) -> tuple[int | None, str | None, str | None]:
    """Nodule count, kind and side from the nodule mentions (with negation and hints)."""
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
        positive = [i for i in mentions if not _negated(toks, i)]
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
        # count
        counts = []
        plural = False
        for i in positive:
            q = _quantity(toks, i)
            if q == "plural":
                plural = True
            elif q != "ref":
                window = toks[i + 1 : i + 8]
                counts.append(2 if q == 1 and "each" in window and "lobe" in window else q)
        total = sum(counts) if counts else (3 if plural else 0)
        if total:
            if running and any(t in _ADDITION for t in toks):
                running += total
            elif s.section != "impression" or not running:
                running = max(running, total)
        # kind
        for j, t in enumerate(toks):
            if t.startswith("kd_") and not _negated(toks, j):
                following = next((k for k in mentions if k > j), None)
                if following is not None and following - j <= 4 and following not in positive:
                    continue
                kinds.append(t[3:])
        # side
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


def _pyramidal(body: list[_Sentence]) -> bool | None:
    for s in body:
        for i, tok in enumerate(s.tokens):
            if tok == "pyramidal":
                return not _negated(s.tokens, i)
    return None


def _first_dx(sentences: list[_Sentence]) -> str | None:
    for s in sentences:
        for i, tok in enumerate(s.tokens):
            if tok in _DX_TO and not _negated(s.tokens, i):
                return _DX_TO[tok]
    return None


def _impression(body: list[_Sentence]) -> str | None:
    section = [s for s in body if s.section == "impression"]
    if section:
        found = _first_dx(section)
        if found:
            return found
        for s in section:  # "Impression: solitary cold nodule, right lobe"
            if any(
                t in ("nodule", "nodules") and not _negated(s.tokens, i)
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
    body = _sentences(report)
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
