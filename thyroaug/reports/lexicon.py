"""Normalising report text: plain lower-case words with value phrases as placeholder tokens.

Owns step 1 of the rule-based reader: the character map and the ordered rewrite tables
(abbreviations, spelling, compound heads, nodules and kinds, diagnoses, gland size, distribution,
intensity levels) that turn "rt lobe: hypofunctioning area" into "right lobe : kd_cold nodule".
``normalize`` applies them in that order; the order matters (earlier tables feed later ones).
"""

from __future__ import annotations

import re
import unicodedata


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


def _apply(text: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    return text


def normalize(text: str) -> str:
    """Lower case, plain characters, abbreviations expanded, value phrases as placeholder tokens."""
    for char, repl in _CHARS.items():
        text = text.replace(char, repl)
    text = unicodedata.normalize("NFKC", text).lower()
    for rules in (
        _ABBREVIATIONS, _SPELLING, _HEADS, _NODULE, _DIAGNOSES, _SIZE, _DISTRIBUTION, _LEVELS
    ):  # fmt: skip
        text = re.sub(r"[ \t]+", " ", _apply(text, rules))
    return text.strip()
