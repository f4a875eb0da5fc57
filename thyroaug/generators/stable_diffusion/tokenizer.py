"""A CLIP-style BPE tokenizer trained on the cohort's prompts (the ``scratch`` Stable Diffusion).

``train_clip_tokenizer`` trains it with ``tokenizers`` through CLIP's own text pipeline and
vocabulary layout, so the result is an ordinary ``transformers.CLIPTokenizer`` without an unknown
token (docs/generators.md, "The scratch tokenizer"); ``check_prompts`` checks prompts against a
tokenizer's limit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from thyroaug.errors import PromptError
from thyroaug.utils.atomic import staging_prefix, sweep_staging

log = logging.getLogger(__name__)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
"""Token limit of SD v1's CLIP text encoder, start and end tokens included."""

CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
    r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
"""CLIP's pre-tokenizer split (identical to transformers' CLIPTokenizer)."""


def _clip_text_pipeline(tokenizer: object) -> None:
    """Give a ``tokenizers.Tokenizer`` CLIP's normalizer and pre-tokenizer (in place)."""
    tokenizer.normalizer = normalizers.Sequence(  # type: ignore[attr-defined]
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(  # type: ignore[attr-defined]
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def train_clip_tokenizer(
    prompts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 1000,
    min_frequency: int = 2,
    model_max_length: int = MODEL_MAX_LENGTH,
):
    """Train a byte-level BPE on ``prompts`` and save it as a CLIP tokenizer folder.

    Args:
        prompts: training texts (the cohort's prompts; empty strings are ignored).
        out_dir: destination folder (written atomically; replaced if it exists).
        vocab_size: target vocabulary size, the 512 byte symbols and 2 special tokens included.
        min_frequency: a pair must occur this often to be merged.
        model_max_length: the text encoder's token limit stored in the tokenizer config.

    Returns:
        The saved tokenizer, reloaded with ``CLIPTokenizer.from_pretrained(out_dir)``.

    Raises:
        PromptError: no non-empty prompt to train on, or ``vocab_size`` below the byte alphabet.
    """
    # transformers loads to train a tokenizer, not with `train-sd --help` (trainer imports this)
    from transformers import CLIPTokenizer

    texts = [p for p in prompts if isinstance(p, str) and p.strip()]
    if not texts:
        raise PromptError("cannot train a tokenizer: the cohort has no non-empty prompt")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    base = sorted(alphabet) + [c + "</w>" for c in sorted(alphabet)]
    if vocab_size < len(base) + 2:
        raise PromptError(f"tokenizer vocab_size={vocab_size} is below the {len(base) + 2} minimum")

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=None))
    _clip_text_pipeline(bpe)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    merges = [(a, b) for a, b in _merges_of(bpe)]
    n_merges = max(0, vocab_size - len(base) - 2)
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(base)}
    kept: list[tuple[str, str]] = []
    for a, b in merges:
        if len(kept) >= n_merges:
            break
        if a not in vocab or b not in vocab or a + b in vocab:
            continue
        vocab[a + b] = len(vocab)
        kept.append((a, b))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)

    tok = CLIPTokenizer(vocab=vocab, merges=kept, model_max_length=model_max_length)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=staging_prefix(out_dir)))
    try:
        tok.save_pretrained(str(tmp))
        # vocab.json + merges.txt too, the files older (slow) CLIPTokenizer versions read
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in kept]
        (tmp / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("trained a CLIP BPE tokenizer on %d prompts: %d tokens", len(texts), len(vocab))
    return CLIPTokenizer.from_pretrained(str(out_dir), local_files_only=True)


def _merges_of(bpe: object) -> list[tuple[str, str]]:
    """The ordered merges of a trained ``tokenizers`` BPE model."""
    model = json.loads(bpe.to_str())["model"]  # type: ignore[attr-defined]
    out = []
    for m in model["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        out.append((a, b))
    return out


def token_lengths(tokenizer: object, prompts: list[str]) -> list[int]:
    """Token count of each prompt with the start and end tokens, without truncation."""
    enc = tokenizer(list(prompts), add_special_tokens=True, truncation=False)  # type: ignore[operator]
    return [len(ids) for ids in enc["input_ids"]]


def check_prompts(
    prompts: list[str],
    tokenizer: object,
    case_ids: list[str] | None = None,
    truncate: bool = False,
) -> list[str]:
    """Check every prompt against the tokenizer's limit (``model_max_length``, 77 for SD v1).

    Args:
        prompts: the prompts, one per case.
        tokenizer: the model's own tokenizer (a CLIPTokenizer).
        case_ids: ids used in the error message (default: the prompt's position).
        truncate: instead of failing, keep over-long prompts; the tokenizer then cuts them at the
            limit (as ``StableDiffusionPipeline`` does) and the affected cases are logged.

    Returns:
        The prompts, unchanged.

    Raises:
        PromptError: a prompt is not a string, or too long while ``truncate`` is False; the message
            names every offending case and its token count.
    """
    ids = (
        [str(c) for c in case_ids]
        if case_ids is not None
        else [f"#{i}" for i in range(len(prompts))]
    )
    bad_type = [ids[i] for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad_type:
        raise PromptError(f"prompt is not text for case(s) {', '.join(bad_type[:10])}")
    limit = int(getattr(tokenizer, "model_max_length", MODEL_MAX_LENGTH))
    lengths = token_lengths(tokenizer, prompts) if prompts else []
    over = [(ids[i], n) for i, n in enumerate(lengths) if n > limit]
    if over:
        listing = ", ".join(f"{c} ({n} tokens)" for c, n in over[:10])
        more = f" and {len(over) - 10} more" if len(over) > 10 else ""
        if not truncate:
            raise PromptError(
                f"{len(over)} prompt(s) exceed the text encoder's {limit}-token limit: "
                f"{listing}{more}; shorten them in thyroaug.reports.prompts or pass "
                "--truncate-prompts "
                "to cut them"
            )
        log.warning(
            "truncating %d prompt(s) to the %d-token limit: %s%s", len(over), limit, listing, more
        )
    return list(prompts)
