"""Prompt rendering, the token bound, the extractor protocol / registry and report_to_prompt."""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
import logging
import os
import random
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from thyroaug.errors import ConfigError, PromptError
from thyroaug.phantom.reports import write_report
from thyroaug.phantom.styles import CENTER_STYLES
from thyroaug.reports.findings import FIELD_VALUES, Findings
from thyroaug.reports.prompts import (
    CLIP_WORD_TOKENS,
    DROP_ORDER,
    EXTRACTORS,
    MAX_TOKENS,
    MODALITY,
    QUESTIONS,
    Extractor,
    LLMExtractor,
    RuleBasedExtractor,
    count_tokens,
    get_extractor,
    parse_answers,
    render_prompt,
    report_to_prompt,
)

ALL_VALUES = {
    **{k: (None, *v) for k, v in FIELD_VALUES.items()},
    "nodules": (None, 0, 1, 2, 3),
    "pyramidal_lobe": (None, True, False),
}


def random_findings(rng: np.random.Generator) -> Findings:
    return Findings(**{k: v[int(rng.integers(len(v)))] for k, v in ALL_VALUES.items()})


def longest_findings() -> Findings:
    """The Findings whose prompt is longest (each field's longest phrase is independent)."""
    best = {}
    for name, values in ALL_VALUES.items():
        best[name] = max(
            values, key=lambda v, n=name: count_tokens(render_prompt(Findings(**{n: v})))
        )
    best["nodule_kind"] = "mixed"
    return Findings(**best)


# -------------------------------------------------------------------------------- questions
def test_one_question_per_findings_field_in_order():
    assert [q.field for q in QUESTIONS] == [f.name for f in fields(Findings)]
    for q in QUESTIONS:
        assert q.text.endswith("?") or "Answer" in q.text
        if q.field in FIELD_VALUES:
            assert q.answers == FIELD_VALUES[q.field]


# ----------------------------------------------------------------------------- token bound
def test_count_tokens_known_values():
    assert count_tokens("") == 2
    assert count_tokens(MODALITY) == 2 + 2 + 1 + 3  # anter|ior thyroid sc|inti|graphy
    assert count_tokens("Thyroid, THYROID") == 2 + 1 + 1 + 1
    assert count_tokens("xqz") == 2 + 3  # unknown word: one token per byte at most
    assert count_tokens("12") == 2 + 2  # CLIP splits digits
    assert count_tokens("é") == 2 + 2  # two UTF-8 bytes
    assert count_tokens("a--b") == 2 + 1 + 2 + 1


def test_count_tokens_is_at_least_the_number_of_pieces():
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 ,.-'!?é_☃"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        pieces = re.findall(r"[^\W\d_]+|\d|[^\w\s]|_", text.lower())
        assert count_tokens(text) >= len(pieces) + 2
        assert count_tokens(text) >= len(text.split()) + 2


def test_every_prompt_word_has_an_exact_count():
    words = set()
    for name, values in ALL_VALUES.items():
        for value in values:
            words |= set(re.findall(r"[a-z]+", render_prompt(Findings(**{name: value}))))
    assert words <= set(CLIP_WORD_TOKENS), words - set(CLIP_WORD_TOKENS)


def test_rendered_prompts_fit_the_limit():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        assert count_tokens(render_prompt(random_findings(rng))) <= MAX_TOKENS
    longest = render_prompt(longest_findings())
    assert count_tokens(longest) <= MAX_TOKENS
    # the longest prompt keeps every field: nothing had to be dropped
    assert "pyramidal lobe visible" in longest and "background" in longest


def _clip_tokenizer_files(tmp: Path) -> tuple[str, str] | None:
    """vocab.json + merges.txt of SD v1's CLIP tokenizer, if available offline."""
    candidates = []
    if os.environ.get("THYROAUG_CLIP_TOKENIZER"):
        candidates.append(Path(os.environ["THYROAUG_CLIP_TOKENIZER"]))
    if os.environ.get("THYROAUG_SD_BASE"):
        candidates.append(Path(os.environ["THYROAUG_SD_BASE"]) / "tokenizer")
    spec = importlib.util.find_spec("open_clip")
    if spec and spec.origin:
        candidates.append(Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz")
    for path in candidates:
        if path.is_dir() and (path / "vocab.json").exists() and (path / "merges.txt").exists():
            return str(path / "vocab.json"), str(path / "merges.txt")
        if path.is_file() and path.name.endswith(".txt.gz"):  # CLIP's own BPE file
            with gzip.open(path) as fh:
                merges = fh.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
            byte_chars = [*range(33, 127), *range(161, 173), *range(174, 256)]
            extra = [b for b in range(256) if b not in byte_chars]
            symbols = [chr(b) for b in byte_chars] + [chr(256 + i) for i in range(len(extra))]
            vocab = symbols + [s + "</w>" for s in symbols]
            vocab += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
            (tmp / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
            (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
            return str(tmp / "vocab.json"), str(tmp / "merges.txt")
    return None


def test_bound_against_the_real_clip_tokenizer(tmp_path):
    files = _clip_tokenizer_files(tmp_path)
    if files is None:
        pytest.skip(
            "no CLIP tokenizer offline (set THYROAUG_CLIP_TOKENIZER to a folder with vocab.json "
            "and merges.txt, or install open_clip_torch, which ships CLIP's BPE file)"
        )
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(*files)

    def real(text: str) -> int:
        return len(tok(text, truncation=False)["input_ids"])

    assert real("a photo of a cat") == 7  # sanity: this is CLIP's vocabulary
    for word, n in CLIP_WORD_TOKENS.items():
        assert real(word) - 2 == n, word
    rng = np.random.default_rng(1)
    for _ in range(500):
        prompt = render_prompt(random_findings(rng))
        assert count_tokens(prompt) == real(prompt), prompt
    texts = [write_report(random_findings(rng), c, rng) for c in CENTER_STYLES for _ in range(5)]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789 ,.-'!?é_☃&;"
    py = random.Random(2)
    texts += ["".join(py.choice(chars) for _ in range(py.randint(1, 100))) for _ in range(300)]
    texts += ["&amp; &lt;b&gt;", "don't it's", "Goître naïve ↑↑ 12.5%"]
    for text in texts:
        assert count_tokens(text) >= real(text), text


# -------------------------------------------------------------------------------- rendering
def test_render_prompt_template_and_order():
    f = Findings(
        "enlarged", "normal", "heterogeneous", 2, "cold", "right", "low", "normal", None, "NG"
    )
    assert render_prompt(f) == (
        "anterior thyroid scintigraphy, nodular goiter, enlarged gland, normal heterogeneous "
        "uptake, two cold nodules in the right lobe, low background, salivary glands visible"
    )
    g = Findings(
        "markedly enlarged", "intense", "homogeneous", 0, None, None, "low", "faint", True, "DG"
    )
    assert render_prompt(g) == (
        "anterior thyroid scintigraphy, diffuse goiter, markedly enlarged gland, intense "
        "homogeneous uptake, no nodules, low background, faint salivary glands, pyramidal lobe "
        "visible"
    )
    assert render_prompt(Findings()) == MODALITY
    assert render_prompt(Findings(impression="TI", uptake="absent")) == (
        f"{MODALITY}, thyroiditis, absent uptake"
    )
    assert (
        render_prompt(Findings(impression="NL", pyramidal_lobe=False))
        == f"{MODALITY}, normal thyroid"
    )
    assert render_prompt(Findings(nodule_kind="hot")) == f"{MODALITY}, hot nodules"
    assert render_prompt(Findings(), prefix="") == ""


def test_field_order_is_fixed():
    rng = np.random.default_rng(3)
    markers = ["goiter|normal thyroid|thyroiditis", r"\bgland\b", "uptake", "nodule", "background",
               "salivary", "pyramidal"]  # fmt: skip
    for _ in range(300):
        prompt = render_prompt(random_findings(rng))
        positions = [m.start() for p in markers if (m := re.search(p, prompt))]
        assert positions == sorted(positions), prompt


def test_fields_are_dropped_least_important_first(caplog):
    f = longest_findings()
    full = render_prompt(f)
    with caplog.at_level(logging.WARNING, logger="thyroaug.reports.prompts"):
        short = render_prompt(f, max_tokens=count_tokens(full) - 1)
    assert "pyramidal" not in short and "salivary" in short
    assert "dropped pyramidal_lobe" in caplog.text
    bare = render_prompt(f, max_tokens=count_tokens(f"{MODALITY}, nodular goiter"))
    assert bare == f"{MODALITY}, {render_prompt(Findings(impression=f.impression), prefix='')}"
    assert DROP_ORDER[-1] == "nodules" and "impression" not in DROP_ORDER


def test_prompt_error_when_even_the_bare_prompt_is_too_long():
    with pytest.raises(PromptError, match="over the limit of 77"):
        render_prompt(Findings(impression="NG"), prefix="scan " * 80)
    with pytest.raises(PromptError, match="shorten the prefix"):
        render_prompt(Findings(impression="DG"), max_tokens=5)


def test_render_is_deterministic():
    rng = np.random.default_rng(9)
    for _ in range(50):
        f = random_findings(rng)
        assert render_prompt(f) == render_prompt(Findings(**f.to_dict()))


# ------------------------------------------------------------------------- report_to_prompt
def test_report_to_prompt_end_to_end():
    report = (
        "FINDINGS: The thyroid gland is enlarged. Tracer uptake is intense and homogeneous. "
        "No focal nodules. Background activity is low.\nIMPRESSION: Graves' disease."
    )
    assert report_to_prompt(report) == (
        f"{MODALITY}, diffuse goiter, enlarged gland, intense homogeneous uptake, no nodules, "
        "low background"
    )


@pytest.mark.parametrize("report", ["", "   \n\t ", None])
def test_empty_report_is_an_error(report):
    with pytest.raises(PromptError, match="empty report"):
        report_to_prompt(report)  # type: ignore[arg-type]


def test_unrecognised_report_gives_the_modality_phrase(caplog):
    with caplog.at_level(logging.WARNING, logger="thyroaug.reports.prompts"):
        assert report_to_prompt("Study not performed, patient did not attend.") == MODALITY
    assert "no findings recognised" in caplog.text


def test_report_to_prompt_names_the_report_when_too_long():
    with pytest.raises(PromptError, match="Impression: normal"):
        report_to_prompt("Impression: normal study.", prefix="very " * 100)


def test_every_phantom_report_gives_a_prompt_within_the_limit():
    rng = np.random.default_rng(21)
    for center in CENTER_STYLES:
        for _ in range(30):
            prompt = report_to_prompt(write_report(random_findings(rng), center, rng))
            assert prompt.startswith(MODALITY) and count_tokens(prompt) <= MAX_TOKENS


# ------------------------------------------------------------------------------- extractors
class FakeLLM:
    """Returns canned answers and records the prompts it was sent."""

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.answers.pop(0)


GOOD = json.dumps(
    {
        "gland_size": "Enlarged",
        "uptake": "intense",
        "distribution": "homogeneous",
        "nodules": 0,
        "nodule_kind": None,
        "nodule_side": "null",
        "background": "low",
        "salivary": "faint",
        "pyramidal_lobe": "yes",
        "impression": "dg",
    }
)


def test_extractors_follow_the_protocol_and_registry():
    assert isinstance(RuleBasedExtractor(), Extractor)
    assert isinstance(LLMExtractor(FakeLLM()), Extractor)
    assert set(EXTRACTORS) == {"rule", "llm"}
    assert isinstance(get_extractor(), RuleBasedExtractor)
    assert isinstance(get_extractor("llm", complete=FakeLLM()), LLMExtractor)
    with pytest.raises(ConfigError, match="unknown extractor 'gpt'"):
        get_extractor("gpt")
    with pytest.raises(ConfigError, match="llm"):
        get_extractor("llm")
    with pytest.raises(ConfigError, match="callable"):
        LLMExtractor("not callable")  # type: ignore[arg-type]


def test_llm_extractor_asks_the_fixed_questions_and_validates():
    llm = FakeLLM(f"Sure! Here is the answer:\n```json\n{GOOD}\n```")
    report = "Enlarged gland, intense uptake. Impression: Graves."
    f = LLMExtractor(llm).extract(report)
    assert f == Findings(
        "enlarged", "intense", "homogeneous", 0, None, None, "low", "faint", True, "DG"
    )
    (prompt,) = llm.prompts
    assert report in prompt
    for q in QUESTIONS:
        assert f"- {q.field}: {q.text}" in prompt
        assert " | ".join(q.answers) in prompt
    assert report_to_prompt(report, LLMExtractor(FakeLLM(GOOD))).startswith(
        f"{MODALITY}, diffuse goiter, enlarged gland"
    )


def test_llm_extractor_retries_after_an_invalid_answer():
    llm = FakeLLM('{"uptake": "sky high"}', GOOD)
    f = LLMExtractor(llm, attempts=2).extract("report")
    assert f.uptake == "intense" and len(llm.prompts) == 2
    assert "previous answer was invalid" in llm.prompts[1] and "sky high" in llm.prompts[1]
    with pytest.raises(PromptError, match="no valid answer in 2 tries"):
        LLMExtractor(FakeLLM("no idea", "still no idea"), attempts=2).extract("report")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("[1, 2]", "no JSON object"),
        ("{'uptake': 'low'}", "not valid JSON"),
        ('{"colour": "red"}', "unknown key"),
        ('{"uptake": "sky high"}', "uptake='sky high'"),
        ('{"nodules": -1}', "nodules=-1"),
        ('{"nodules": true}', "nodules=True"),
        ('{"pyramidal_lobe": "maybe"}', "pyramidal_lobe='maybe'"),
    ],
)
def test_parse_answers_rejects_invalid_answers(answer, message):
    with pytest.raises(PromptError, match=re.escape(message)):
        parse_answers(answer)


def test_parse_answers_normalises_values():
    f = parse_answers('{"nodules": "5", "impression": "ng", "nodule_kind": " Cold "}')
    assert f == Findings(nodules=3, impression="NG", nodule_kind="cold")
    assert parse_answers('{"nodules": "multiple", "pyramidal_lobe": false}').nodules == 3
    assert parse_answers("{}") == Findings()


def test_extractor_options_cover_every_field():
    for name, values in itertools.chain(FIELD_VALUES.items()):
        q = next(q for q in QUESTIONS if q.field == name)
        assert set(q.answers) == set(values)
