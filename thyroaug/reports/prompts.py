"""Physician report -> structured findings -> Stable Diffusion prompt (under 77 CLIP tokens).

The paper's two steps (Sec. 3.1: fixed questions answered per report, then a prompt built from the
answers) with the answering model pluggable: an ``Extractor`` (offline ``RuleBasedExtractor`` or
any LLM through ``LLMExtractor``) fills ``Findings``; ``render_prompt`` writes them in a fixed
order within ``MAX_TOKENS``. Design, the token bound and empty-report rules: ``docs/data.md``,
"Reports -> findings -> prompts".
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol, runtime_checkable

from thyroaug.errors import ConfigError, PromptError
from thyroaug.reports.findings import FIELD_VALUES, Findings
from thyroaug.reports.rules import extract_findings

__all__ = [
    "CLIP_WORD_TOKENS",
    "DROP_ORDER",
    "EXTRACTORS",
    "MAX_TOKENS",
    "MODALITY",
    "QUESTIONS",
    "Extractor",
    "LLMExtractor",
    "Question",
    "RuleBasedExtractor",
    "count_tokens",
    "get_extractor",
    "parse_answers",
    "render_prompt",
    "report_to_prompt",
]

log = logging.getLogger(__name__)

MAX_TOKENS = 77
"""Token limit of SD v1's CLIP text encoder, start and end tokens included."""

MODALITY = "anterior thyroid scintigraphy"
"""The phrase every prompt starts with."""


# -------------------------------------------------------------------------------- questions
@dataclass(frozen=True)
class Question:
    """One fixed question asked of every report.

    Attributes:
        field: The ``Findings`` field that holds the answer.
        text: The question as put to a reader (or an LLM).
        answers: The allowed answers, as they appear in JSON.
    """

    field: str
    text: str
    answers: tuple[str, ...]


QUESTIONS: tuple[Question, ...] = (
    Question(
        "gland_size",
        "What is the size of the thyroid gland?",
        FIELD_VALUES["gland_size"],
    ),
    Question(
        "uptake",
        "How intense is the overall tracer uptake of the thyroid (not of a nodule)?",
        FIELD_VALUES["uptake"],
    ),
    Question(
        "distribution",
        "How is the tracer distributed within the gland?",
        FIELD_VALUES["distribution"],
    ),
    Question(
        "nodules",
        "How many focal nodules are described? Answer 0 if the report says there are none and 3 "
        "for three or more / multiple.",
        ("0", "1", "2", "3"),
    ),
    Question(
        "nodule_kind",
        "Are the nodules hot (hyperfunctioning), cold (hypofunctioning), warm, or mixed (both hot "
        "and cold)?",
        FIELD_VALUES["nodule_kind"],
    ),
    Question(
        "nodule_side",
        "Where are the nodules: right lobe, left lobe, bilateral (both lobes) or isthmus?",
        FIELD_VALUES["nodule_side"],
    ),
    Question(
        "background",
        "How high is the background (soft tissue / blood pool) activity?",
        FIELD_VALUES["background"],
    ),
    Question(
        "salivary",
        "How do the salivary glands appear: faint, normally visible, or prominent?",
        FIELD_VALUES["salivary"],
    ),
    Question(
        "pyramidal_lobe",
        "Is a pyramidal lobe visualised?",
        ("true", "false"),
    ),
    Question(
        "impression",
        "What is the scintigraphic impression: DG (diffuse goitre, Graves' disease), NG (nodular "
        "goitre, incl. toxic adenoma and solitary nodules), NL (normal scan) or TI (thyroiditis)?",
        FIELD_VALUES["impression"],
    ),
)
"""The fixed questions, one per ``Findings`` field, in prompt order."""

# --------------------------------------------------------------------------- token counting
CLIP_WORD_TOKENS: dict[str, int] = {
    # measured with the SD v1 CLIP tokenizer (openai/clip-vit-large-patch14 BPE); every word
    # render_prompt can emit is listed (tests check this), so prompts are counted exactly.
    "a": 1, "absent": 1, "and": 1, "anterior": 2, "background": 1, "both": 1, "cold": 1,
    "diffuse": 2, "enlarged": 2, "faint": 1, "gland": 1, "glands": 2, "goiter": 2, "goitre": 3,
    "heterogeneous": 3, "high": 1, "homogeneous": 3, "hot": 1, "in": 1, "increased": 1,
    "intense": 1, "isthmus": 3, "left": 1, "lobe": 1, "lobes": 1, "low": 1, "markedly": 2,
    "mildly": 1, "mixed": 1, "multiple": 1, "no": 1, "nodular": 3, "nodule": 3, "nodules": 3,
    "normal": 1, "of": 1, "one": 1, "patchy": 1, "prominent": 1, "pyramidal": 2, "right": 1,
    "salivary": 2, "scan": 1, "scintigraphy": 3, "sized": 1, "small": 1, "the": 1,
    "thyroid": 1, "thyroiditis": 3, "two": 1, "uptake": 2, "very": 1, "visible": 1, "warm": 1,
    "with": 1,
}  # fmt: skip

_PRETOKEN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")


def count_tokens(text: str) -> int:
    """Upper bound on the SD v1 CLIP token count of ``text``, start and end tokens included.

    Known words count their exact CLIP pieces (``CLIP_WORD_TOKENS``), digits one each, any other
    piece its UTF-8 byte count, which byte-level BPE never exceeds (``docs/data.md``).
    """
    clean = unicodedata.normalize("NFC", text).lower()
    total = 2  # <|startoftext|> and <|endoftext|>
    for piece in _PRETOKEN.findall(clean):
        known = CLIP_WORD_TOKENS.get(piece)
        if known is not None:
            total += known
        elif piece.isascii() and piece.isdigit():
            total += 1
        else:
            total += len(piece.encode("utf-8"))
    return total


# -------------------------------------------------------------------------------- rendering
DROP_ORDER: tuple[str, ...] = (
    "pyramidal_lobe",
    "salivary",
    "background",
    "nodule_side",
    "distribution",
    "nodule_kind",
    "gland_size",
    "uptake",
    "nodules",
)
"""Fields dropped, first to last, when a prompt is over the limit (impression is never dropped)."""

_IMPRESSION_PHRASE = {
    "DG": "diffuse goiter",
    "NG": "nodular goiter",
    "NL": "normal thyroid",
    "TI": "thyroiditis",
}
_SIZE_PHRASE = {
    "small": "small gland",
    "normal": "normal-sized gland",
    "mildly enlarged": "mildly enlarged gland",
    "enlarged": "enlarged gland",
    "markedly enlarged": "markedly enlarged gland",
}
_COUNT_WORD = {1: "one", 2: "two", 3: "multiple"}
_KIND_PHRASE = {"hot": "hot", "cold": "cold", "warm": "warm", "mixed": "hot and cold"}
_SIDE_PHRASE = {
    "right": "in the right lobe",
    "left": "in the left lobe",
    "bilateral": "in both lobes",
    "isthmus": "in the isthmus",
}
_SALIVARY_PHRASE = {
    "faint": "faint salivary glands",
    "normal": "salivary glands visible",
    "prominent": "prominent salivary glands",
}


def _phrases(f: Findings) -> list[str]:
    """The prompt phrases of ``f`` in the fixed field order (unknown fields give none)."""
    out = []
    if f.impression:
        out.append(_IMPRESSION_PHRASE[f.impression])
    if f.gland_size:
        out.append(_SIZE_PHRASE[f.gland_size])
    if f.uptake or f.distribution:
        out.append(" ".join(x for x in (f.uptake, f.distribution, "uptake") if x))
    if f.nodules == 0:
        out.append("no nodules")
    elif f.nodules is not None or f.nodule_kind or f.nodule_side:
        count = _COUNT_WORD.get(min(f.nodules, 3)) if f.nodules else None
        noun = "nodule" if f.nodules == 1 else "nodules"
        kind = _KIND_PHRASE[f.nodule_kind] if f.nodule_kind else None
        side = _SIDE_PHRASE[f.nodule_side] if f.nodule_side else None
        out.append(" ".join(x for x in (count, kind, noun, side) if x))
    if f.background:
        out.append(f"{f.background} background")
    if f.salivary:
        out.append(_SALIVARY_PHRASE[f.salivary])
    if f.pyramidal_lobe:  # an absent pyramidal lobe is the norm; "no X" also confuses CLIP
        out.append("pyramidal lobe visible")
    return out


def render_prompt(
    findings: Findings, *, prefix: str = MODALITY, max_tokens: int = MAX_TOKENS
) -> str:
    """Write ``findings`` as a prompt: ``prefix, impression, size, uptake, nodules, ...``.

    Args:
        findings: The structured answers (None fields are left out).
        prefix: Leading modality phrase (may be empty).
        max_tokens: Token limit, start/end tokens included (``count_tokens``).

    Returns:
        The prompt, with fields dropped in ``DROP_ORDER`` until it fits (logged).

    Raises:
        PromptError: Even the prefix and impression alone exceed ``max_tokens``.
    """
    current = findings
    dropped: list[str] = []

    def build(f: Findings) -> str:
        return ", ".join(x for x in (prefix.strip(), *_phrases(f)) if x)

    prompt = build(current)
    for name in DROP_ORDER:
        if count_tokens(prompt) <= max_tokens:
            break
        if getattr(current, name) is not None:
            current = replace(current, **{name: None})
            dropped.append(name)
            prompt = build(current)
    n = count_tokens(prompt)
    if n > max_tokens:
        raise PromptError(
            f"prompt {prompt!r} needs up to {n} CLIP tokens, over the limit of {max_tokens}, even "
            f"after dropping {', '.join(dropped) or 'nothing'}; shorten the prefix "
            f"({count_tokens(prefix) - 2} tokens) or raise max_tokens"
        )
    if dropped:
        log.warning("prompt over %d tokens: dropped %s", max_tokens, ", ".join(dropped))
    return prompt


# ----------------------------------------------------------------------------- extractors
@runtime_checkable
class Extractor(Protocol):
    """Answers ``QUESTIONS`` for one free-text report."""

    def extract(self, report: str) -> Findings:
        """Return the findings the report states (None where it does not say)."""
        ...


class RuleBasedExtractor:
    """Offline keyword/regex extractor (see ``extract_findings``)."""

    name = "rule"

    def extract(self, report: str) -> Findings:
        """Return the findings the report states (None where it does not say)."""
        return extract_findings(report)


def _question_prompt(report: str) -> str:
    lines = [
        "You read thyroid scintigraphy reports (anterior 99mTc-pertechnetate scans) and answer "
        "fixed questions. Answer only from the report. Use null when the report does not say.",
        "",
        "Questions (JSON key: question; allowed answers):",
    ]
    for q in QUESTIONS:
        lines.append(f"- {q.field}: {q.text} ({' | '.join(q.answers)})")
    keys = ", ".join(f'"{q.field}"' for q in QUESTIONS)
    lines += [
        "",
        f"Reply with one JSON object with exactly these keys: {keys}. Use a JSON number for "
        "nodules, true/false for pyramidal_lobe, and the allowed strings for the others.",
        "",
        "Report:",
        '"""',
        report.strip(),
        '"""',
    ]
    return "\n".join(lines)


_NULLS = {"", "null", "none", "unknown", "not stated", "not mentioned", "n/a", "na"}


def parse_answers(response: str) -> Findings:
    """Validate an LLM's JSON answer into ``Findings``.

    Accepts a bare JSON object or one wrapped in prose / a code fence. Keys must be ``Findings``
    fields (missing keys mean "not stated"); values must be allowed answers (case-insensitive);
    nodules above 3 are capped at 3 ("three or more").

    Raises:
        PromptError: No JSON object, unknown keys, or a value that is not an allowed answer.
    """
    start, end = response.find("{"), response.rfind("}")
    if start < 0 or end < start:
        raise PromptError(f"no JSON object in the answer: {response[:200]!r}")
    try:
        data = json.loads(response[start : end + 1])
    except json.JSONDecodeError as exc:
        raise PromptError(f"answer is not valid JSON ({exc}): {response[:200]!r}") from exc
    if not isinstance(data, dict):
        raise PromptError(f"answer must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(Findings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PromptError(f"answer has unknown key(s) {unknown}; expected {sorted(known)}")
    values: dict[str, Any] = {}
    problems = []
    for key, raw in data.items():
        value = raw.strip().lower() if isinstance(raw, str) else raw
        if value is None or (isinstance(value, str) and value in _NULLS):
            values[key] = None
        elif key == "nodules":
            words = {"no": 0, "zero": 0, "one": 1, "two": 2, "three": 3, "multiple": 3}
            if isinstance(value, str) and value in words:
                value = words[value]
            elif isinstance(value, str) and value.isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"nodules={raw!r} (a whole number >= 0)")
            else:
                values[key] = min(value, 3)
        elif key == "pyramidal_lobe":
            truth = {"true": True, "yes": True, "present": True, "false": False, "no": False}
            if isinstance(value, bool):
                values[key] = value
            elif isinstance(value, str) and value in truth:
                values[key] = truth[value]
            else:
                problems.append(f"pyramidal_lobe={raw!r} (true/false)")
        else:
            allowed = FIELD_VALUES[key]
            match = next(
                (a for a in allowed if isinstance(value, str) and a.lower() == value), None
            )
            if match is None:
                problems.append(f"{key}={raw!r} (one of {', '.join(allowed)})")
            else:
                values[key] = match
    if problems:
        raise PromptError("answer has invalid value(s): " + "; ".join(problems))
    return Findings(**values)


class LLMExtractor:
    """Asks ``QUESTIONS`` through any text-completion callable and validates the JSON answer.

    Args:
        complete: ``complete(prompt) -> str``, e.g. a wrapper around an LLM client.
        attempts: Tries per report; after an invalid answer the question is asked again with the
            validation error appended.
    """

    name = "llm"

    def __init__(self, complete: Callable[[str], str], attempts: int = 2):
        if not callable(complete):
            raise ConfigError(
                f"LLMExtractor needs a callable complete(prompt) -> str, got {complete!r}"
            )
        if attempts < 1:
            raise ConfigError(f"LLMExtractor attempts={attempts}; must be >= 1")
        self.complete = complete
        self.attempts = attempts

    def build_prompt(self, report: str) -> str:
        """The question prompt sent for ``report``."""
        return _question_prompt(report)

    def extract(self, report: str) -> Findings:
        """Ask, validate, retry on an invalid answer.

        Raises:
            PromptError: No valid answer after ``attempts`` tries.
        """
        prompt = self.build_prompt(report)
        error: PromptError | None = None
        for _ in range(self.attempts):
            answer = self.complete(prompt)
            try:
                return parse_answers(str(answer))
            except PromptError as exc:
                error = exc
                log.warning("LLM extractor: invalid answer (%s); asking again", exc)
                prompt = (
                    f"{self.build_prompt(report)}\n\nYour previous answer was invalid: {exc}. "
                    "Reply with the JSON object only."
                )
        raise PromptError(f"LLM extractor gave no valid answer in {self.attempts} tries: {error}")


EXTRACTORS: dict[str, Callable[..., Extractor]] = {
    "rule": RuleBasedExtractor,
    "llm": LLMExtractor,
}
"""Extractor factories by name (``get_extractor``)."""


def get_extractor(name: str = "rule", **kwargs: Any) -> Extractor:
    """Build a registered extractor, e.g. ``get_extractor("llm", complete=my_llm)``.

    Raises:
        ConfigError: Unknown name or wrong arguments for that extractor.
    """
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    try:
        return EXTRACTORS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"extractor {name!r}: {exc}") from exc


def report_to_prompt(
    report: str,
    extractor: Extractor | None = None,
    *,
    prefix: str = MODALITY,
    max_tokens: int = MAX_TOKENS,
) -> str:
    """Extract findings from a report and render the prompt.

    Args:
        report: Free-text report.
        extractor: Any ``Extractor`` (default ``RuleBasedExtractor``).
        prefix: Leading modality phrase.
        max_tokens: Token limit (``count_tokens``).

    Raises:
        PromptError: Empty report, an extractor failure, or a prompt that cannot fit the limit.
    """
    if not isinstance(report, str) or not report.strip():
        raise PromptError(
            f"empty report ({report!r}): nothing to build a prompt from; fix the manifest row or "
            "use render_prompt(Findings()) for a modality-only prompt"
        )
    findings = (extractor or RuleBasedExtractor()).extract(report)
    if findings == Findings():
        log.warning("no findings recognised in report %r; prompt is the prefix alone", report[:80])
    try:
        return render_prompt(findings, prefix=prefix, max_tokens=max_tokens)
    except PromptError as exc:
        raise PromptError(f"report {report[:60]!r}...: {exc}") from exc
