"""Stable Diffusion generator: tokenizer, scratch training, fine-tuning, the four modes, retries."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_cohort

from thyroaug.config import resolve
from thyroaug.contract import CLASSES
from thyroaug.errors import ConfigError, GeneratorError, PromptError
from thyroaug.generators.banks import read_bank
from thyroaug.generators.base import Generator, GeneratorHandle, synthesize
from thyroaug.generators.stable_diffusion.checkpoint import read_card, save_components
from thyroaug.generators.stable_diffusion.components import (
    SDComponents,
    build_text_encoder,
    build_unet,
    collapsed,
    load_components,
    sd_v1_scheduler_config,
)
from thyroaug.generators.stable_diffusion.config import MODES, SDConfig
from thyroaug.generators.stable_diffusion.pipeline import SDGenerator
from thyroaug.generators.stable_diffusion.sources import SourceBank
from thyroaug.generators.stable_diffusion.tokenizer import (
    check_prompts,
    token_lengths,
    train_clip_tokenizer,
)
from thyroaug.generators.stable_diffusion.train import train_sd
from thyroaug.synthetic import SyntheticSet

LONG_PROMPT = " ".join(f"word{i}" for i in range(90))


@pytest.fixture(scope="module", autouse=True)
def _isolated():
    """No local SD weights: scratch by default (one torch thread comes from conftest)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("THYROAUG_SD_BASE", raising=False)
        mp.delenv("THYROAUG_WEIGHTS_DIR", raising=False)
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A smoke-size scratch model trained once for the module (cohort, config, result)."""
    torch.manual_seed(0)
    cohort = make_tiny_cohort()
    cfg = resolve(SDConfig, "smoke")
    out = tmp_path_factory.mktemp("sd") / "run"
    result = train_sd(cohort, cfg, out, progress=False)
    return cohort, cfg, result


@pytest.fixture(scope="module")
def generator(trained) -> SDGenerator:
    _, cfg, result = trained
    assert not (result.model_dir / "sources.safetensors").exists()  # the bank lives beside it
    bank = read_bank(result.model_dir.parent / "condition_bank", SourceBank.load, family="sd")
    return SDGenerator(
        result.model_dir, bank=bank, device="cpu", cfg=replace(cfg, num_inference_steps=2)
    )


def test_paper_defaults_and_profiles():
    paper = resolve(SDConfig, "paper")
    assert (paper.resolution, paper.train_batch_size, paper.gradient_accumulation_steps) == (
        128,
        1,
        4,
    )
    assert paper.learning_rate == 1e-5 and paper.lr_scheduler == "constant"
    assert paper.max_train_steps == 50_000 and paper.max_grad_norm == 1.0
    assert paper.use_ema and paper.random_flip and paper.mixed_precision == "fp16"
    assert paper.num_inference_steps == 50 and paper.max_retries == 3
    assert resolve(SDConfig, "smoke").resolution <= 64
    with pytest.raises(ConfigError, match="source"):
        resolve(SDConfig, "smoke", source="cloud")
    with pytest.raises(ConfigError, match="strength"):
        resolve(SDConfig, "smoke", strength=1.5)


def test_tokenizer_trains_and_loads_offline(tmp_path: Path, tiny_cohort, caplog):
    from transformers import CLIPTokenizer

    prompts = tiny_cohort.table["prompt"].tolist()
    tok = train_clip_tokenizer(prompts, tmp_path / "tok", vocab_size=600)
    again = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    assert (tmp_path / "tok" / "vocab.json").exists() and (tmp_path / "tok" / "merges.txt").exists()
    ids = again(prompts[0])["input_ids"]
    assert ids == tok(prompts[0])["input_ids"]
    assert ids[0] == again.bos_token_id and ids[-1] == again.eos_token_id
    assert "thyroid</w>" in again.convert_ids_to_tokens(ids)  # a learned whole word
    assert again.decode(ids, skip_special_tokens=True) == prompts[0].replace(",", " ,")
    # any text is tokenizable (byte alphabet), nothing maps to the unknown token
    assert again.unk_token_id not in again("Zürich 123 ?!")["input_ids"][1:-1]
    assert again.model_max_length == 77
    # the limit: named case in the error, or a logged truncation
    assert token_lengths(again, ["", LONG_PROMPT])[0] == 2
    with pytest.raises(PromptError, match=r"CASE7 \(\d+ tokens\)"):
        check_prompts(["ok", LONG_PROMPT], again, ["CASE1", "CASE7"])
    with caplog.at_level(logging.WARNING):
        assert check_prompts([LONG_PROMPT], again, ["CASE7"], truncate=True) == [LONG_PROMPT]
    assert "truncating 1 prompt" in caplog.text and "CASE7" in caplog.text


def test_collapsed_detection():
    x = torch.rand(4, 1, 8, 8) * 0.5 + 0.3
    x[1] = 0.01  # black
    x[2] = 0.5  # flat
    x[3, 0, 0, 0] = float("nan")
    assert collapsed(x, 5 / 255, 1e-4).tolist() == [False, True, True, True]


def test_scratch_training_lowers_loss(trained):
    _, cfg, result = trained
    assert result.source == "scratch" and result.train_steps == cfg.max_train_steps
    losses = np.asarray(result.losses)
    assert len(losses) == cfg.max_train_steps and np.isfinite(losses).all()
    assert losses[-6:].mean() < 0.8 * losses[:3].mean()
    vae = np.asarray(result.vae_losses)
    assert vae[-5:].mean() < 0.7 * vae[:3].mean()
    card = read_card(result.model_dir)
    assert card["text_encoder_training"] == "joint" and card["ema"] is True


def test_saved_directory_loads_as_diffusers_pipelines(trained):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    _, _, result = trained
    kw = {"safety_checker": None, "local_files_only": True}
    pipe = StableDiffusionPipeline.from_pretrained(result.model_dir, **kw)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["thyroid scan, dg pattern"], num_inference_steps=2, output_type="pt").images
    assert out.shape == (1, 1, 32, 32)
    i2i = StableDiffusionImg2ImgPipeline.from_pretrained(result.model_dir, **kw)
    i2i.set_progress_bar_config(disable=True)
    img = torch.rand(1, 1, 32, 32)
    assert i2i("x", image=img, num_inference_steps=2, output_type="pt").images.shape == (
        1,
        1,
        32,
        32,
    )


@pytest.mark.parametrize("mode", MODES)
def test_modes_shapes_and_seeded(generator: SDGenerator, mode: str):
    assert isinstance(generator, Generator)
    labels, seeds = ["DG", "TI", "NL"], [3, 4, 5]
    a = generator.sample(labels, seeds, mode=mode)
    b = generator.sample(labels, seeds, mode=mode)
    c = generator.sample(labels, [6, 7, 8], mode=mode)
    assert a.images.shape == (3, 1, 32, 32) and a.images.dtype == torch.float32
    assert float(a.images.min()) >= 0 and float(a.images.max()) <= 1
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images)
    ids = set(generator.bank.case_ids)
    assert all(s in ids for s in a.columns["source_id"])
    # the source case has the requested class
    for lbl, sid in zip(labels, a.columns["source_id"]):
        assert sid[1:3] == lbl  # tiny-cohort ids are <center><label><k>
    prompts = a.columns["prompt"]
    assert (all(p == "" for p in prompts)) == (mode == "SD3")


def test_explicit_conditions_and_input_errors(generator: SDGenerator, trained):
    cohort, _, _ = trained
    masks = cohort.masks[:2]
    out = generator.sample(["DG", "DG"], [0, 1], masks, mode="SD4", prompts=["a", "b"])
    assert out.columns["source_id"] == ["request", "request"]
    imgs = cohort.images[:2]
    out = generator.sample([0, 1], [0, 1], mode="SD3", images=imgs)
    assert out.images.shape == (2, 1, 32, 32)
    with pytest.raises(GeneratorError, match="mode"):
        generator.sample(["DG"], [0])
    with pytest.raises(GeneratorError, match="unknown SD mode"):
        generator.sample(["DG"], [0], mode="SD9")
    with pytest.raises(GeneratorError, match="seeds"):
        generator.sample(["DG", "NG"], [0], mode="SD2")
    with pytest.raises(GeneratorError, match="square grayscale"):
        generator.generate("SD1", [0], prompts=["x"], images=torch.rand(1, 3, 32, 32))
    no_bank = SDGenerator(generator.components)
    no_bank.bank = None
    with pytest.raises(GeneratorError, match="no source bank"):
        no_bank.sample(["DG"], [0], mode="SD1")


def test_prompt_limit_enforced_with_the_model_tokenizer(generator: SDGenerator):
    with pytest.raises(PromptError, match="req-0"):
        generator.generate("SD2", [0], prompts=[LONG_PROMPT], case_ids=["req-0"])
    cfg = replace(generator.cfg, truncate_prompts=True)
    out = generator.generate("SD2", [0], prompts=[LONG_PROMPT], cfg=cfg)
    assert out.images.shape == (1, 1, 32, 32)


def test_black_outputs_are_regenerated(generator: SDGenerator, monkeypatch, caplog):
    vae = generator.components.vae
    original = vae.decode
    calls = {"n": 0}

    def black_first(z, *args, **kwargs):
        out = original(z, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:  # the first batch decodes to a black image
            out = (torch.full_like(out[0], -1.0),)
        return out

    monkeypatch.setattr(vae, "decode", black_first)
    with caplog.at_level(logging.INFO, logger="thyroaug.generators.stable_diffusion.pipeline"):
        res = generator.generate("SD2", [11, 12], prompts=["a", "b"])
    assert res.retries == [1, 1] and res.still_collapsed == [False, False]
    assert res.seeds[0] != 11  # a new seed was used
    assert not collapsed(res.images, 5 / 255, 1e-4).any()
    assert "retry 1/3" in caplog.text and "2 retry generation(s)" in caplog.text


def test_synthesize_through_the_shared_entry_point(generator: SDGenerator, tmp_path: Path):
    handle = GeneratorHandle(generator=generator, uri="models:/thyroaug-sd@champion", version="1")
    synth, grids = synthesize(handle, 2, seed=5, mode="SD1", batch_size=3, progress=False)
    assert synth.method == "SD1" and synth.class_counts() == dict.fromkeys(CLASSES, 2)
    assert set(grids) == set(CLASSES)
    assert {"source_id", "prompt", "retries", "steps", "strength"} <= set(synth.manifest.columns)
    again, _ = synthesize(handle, 2, seed=5, mode="SD1", batch_size=8, progress=False)
    assert torch.allclose(synth.images, again.images, atol=1e-5)  # batch layout does not matter
    loaded = SyntheticSet.load(synth.save(tmp_path / "SD1", grids))
    assert loaded.manifest["source_id"].str.len().min() > 0


def test_resume_continues_the_same_run(trained, tmp_path: Path):
    cohort, cfg, result = trained
    run = tmp_path / "run"
    shutil.copytree(result.model_dir.parent, run)
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / f"checkpoint-{cfg.max_train_steps}")
    resumed = train_sd(cohort, cfg, run, resume=True, progress=False)
    half = cfg.checkpointing_steps
    assert resumed.losses[:half] == result.losses[:half]
    np.testing.assert_allclose(resumed.losses[half:], result.losses[half:], rtol=1e-4, atol=1e-5)
    assert resumed.vae_losses == result.vae_losses  # the VAE stage was reused


def _unet_state(model_dir: Path, part: str) -> dict[str, torch.Tensor]:
    comps = load_components(model_dir)
    return {k: v.clone() for k, v in getattr(comps, part).state_dict().items()}


def test_finetune_from_a_saved_directory(trained, tmp_path: Path):
    cohort, cfg, result = trained
    ft_cfg = replace(
        cfg, source="finetune", max_train_steps=3, checkpointing_steps=0, grid_per_class=0
    )
    ft = train_sd(cohort, ft_cfg, tmp_path / "ft", base_model=result.model_dir, progress=False)
    assert ft.source == "finetune" and ft.card["text_encoder_training"] == "frozen"
    before, after = _unet_state(result.model_dir, "unet"), _unet_state(ft.model_dir, "unet")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    te0, te1 = (
        _unet_state(result.model_dir, "text_encoder"),
        _unet_state(ft.model_dir, "text_encoder"),
    )
    assert all(torch.equal(te0[k], te1[k]) for k in te0)
    with pytest.raises(ConfigError, match="not a diffusers Stable Diffusion directory"):
        train_sd(cohort, ft_cfg, tmp_path / "bad", base_model=tmp_path, progress=False)


def test_finetune_rgb_base_like_sd_v14(trained, tmp_path: Path):
    """A 3-channel VAE (as SD v1.4) goes through the same code path: gray in, gray out."""
    from diffusers import AutoencoderKL, PNDMScheduler

    cohort, cfg, result = trained
    tok = load_components(result.model_dir).tokenizer
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 16),
        latent_channels=4,
        norm_num_groups=8,
    )
    te = build_text_encoder(cfg, tok)
    unet = build_unet(cfg, 16, 4, te.config.hidden_size)
    base = SDComponents(vae, te, tok, unet, PNDMScheduler.from_config(sd_v1_scheduler_config()))
    save_components(base, tmp_path / "rgb-base")
    ft_cfg = replace(cfg, max_train_steps=2, checkpointing_steps=0, grid_per_class=0)
    ft = train_sd(cohort, ft_cfg, tmp_path / "ft", base_model=tmp_path / "rgb-base", progress=False)
    assert ft.card["image_channels"] == 3
    bank = SourceBank.load(ft.model_dir.parent / "condition_bank")
    gen = SDGenerator(
        ft.model_dir, bank=bank, device="cpu", cfg=replace(cfg, num_inference_steps=2)
    )
    for mode in ("SD1", "SD2"):
        out = gen.sample(["NG", "TI"], [1, 2], mode=mode)
        assert out.images.shape == (2, 1, 32, 32)


def test_source_bank_round_trip(trained, tmp_path: Path):
    cohort, _, _ = trained
    bank = SourceBank.from_cohort(cohort, "train")
    bank.save(tmp_path)
    again = SourceBank.load(tmp_path)
    assert again is not None and again.case_ids == bank.case_ids
    assert again.prompts == bank.prompts and torch.equal(again.masks, bank.masks)
    assert bank.pick(1, 7) == again.pick(1, 7)
    assert int(bank.labels[bank.pick(2, 3)]) == 2
    assert SourceBank.load(tmp_path / "missing") is None


class _MeanPool:
    """A tiny feature extractor (4x4 average pool) for the fidelity plumbing."""

    name = "pool4"

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return (
            torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1).double().numpy()
        )


def test_fidelity_by_mode_reuses_the_shared_metrics(generator: SDGenerator, trained):
    from thyroaug.evaluation.fidelity import fidelity_by_mode, fidelity_metrics, table3

    cohort, _, _ = trained
    handle = GeneratorHandle(generator=generator, uri="")
    train = cohort.subset("train")

    def draw(mode: str) -> SyntheticSet:
        return synthesize(handle, 3, 0, mode=mode, progress=False)[0]

    long = fidelity_by_mode(
        draw, train.images, train.labels, ("SD1", "SD3"), per_class=3, extractors=[_MeanPool()]
    )
    assert set(long["mode"]) == {"SD1", "SD3"} and set(long["group"]) == {*CLASSES, "overall"}
    wide = table3(long)
    assert list(wide.index) == [*CLASSES, "overall"]
    assert list(wide.columns) == [("SD1", "FID"), ("SD1", "KID"), ("SD3", "FID"), ("SD3", "KID")]
    # same numbers as calling the shared function on the same synthetic set
    synth, _ = synthesize(handle, 3, 0, mode="SD3", progress=False)
    ref = fidelity_metrics(
        train.images, train.labels, synth.images, synth.labels, [_MeanPool()], per_class=3
    )
    assert wide.loc["overall", ("SD3", "FID")] == pytest.approx(ref["fid_pool4_overall"])
