"""Stable Diffusion inference: ``SDGenerator`` runs the paper's four modes over diffusers pipelines.

  SD1  image + prompt -> image   img2img from the case image with the case's prompt
  SD2  prompt -> image           text-to-image with the case's prompt
  SD3  image -> image            img2img from the case image with the empty prompt
  SD4  mask + prompt -> image    img2img from the case's mask (as an image) with its prompt
Missing conditions come from the ``SourceBank``; black / flat outputs are redone with new seeds.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from thyroaug.errors import ConfigError, GeneratorError
from thyroaug.generators.base import GeneratedBatch, label_index
from thyroaug.generators.stable_diffusion.checkpoint import card_config, read_card
from thyroaug.generators.stable_diffusion.components import (
    SDComponents,
    check_sd_dir,
    collapsed,
    default_device,
    load_components,
    make_scheduler,
    to_unit,
)
from thyroaug.generators.stable_diffusion.config import (
    MODE_DESCRIPTIONS,
    MODES,
    SDConfig,
    check_mode,
)
from thyroaug.generators.stable_diffusion.sources import SourceBank
from thyroaug.generators.stable_diffusion.tokenizer import check_prompts
from thyroaug.utils.resize import resize_images, resize_masks
from thyroaug.utils.seeds import derive_seed

log = logging.getLogger(__name__)

MAX_STEPS = 1000
"""Most inference steps a request may ask (the served ``steps`` param's upper bound)."""

SAMPLING_FIELDS: tuple[str, ...] = (
    "num_inference_steps",
    "guidance_scale",
    "strength",
    "gen_batch_size",
    "black_threshold",
    "collapse_std",
    "max_retries",
    "truncate_prompts",
)


@dataclass
class GenerationResult:
    """Images of one ``SDGenerator.generate`` call, with their seeds and retry counts."""

    images: torch.Tensor
    """float32 [N, 1, size, size] in [0, 1]."""
    seeds: list[int]
    """The seed each image finally came from (differs from the request after a retry)."""
    retries: list[int]
    still_collapsed: list[bool]


@dataclass
class _Conditions:
    """The prompts / start images / masks of a request, completed from the source bank."""

    prompts: Sequence[str] | None
    images: torch.Tensor | None
    masks: torch.Tensor | None
    source_ids: list[str]
    """The bank case each image's conditions came from (``request`` when given)."""


def retry_seed(seed: int, attempt: int) -> int:
    """Seed of the ``attempt``-th regeneration (1, 2, ...) of the image requested with ``seed``."""
    return derive_seed(seed, 0, attempt)


class SDGenerator:
    """Stable Diffusion sampling in the paper's four modes (implements ``base.Generator``).

    Args:
        model: an SD directory (str / Path; a source bank saved in it is loaded too) or
            ``SDComponents`` (used as they are: no move, no cast).
        bank: the source cases (default: the one saved in the model directory, if any).
        cfg: sampling defaults (steps, guidance, strength, batch, black test, retries); default:
            the config stored with the model, else the paper values.
        device: where to run (default: CUDA if available, else CPU).
        dtype: weights dtype (default: fp16 on CUDA, as the authors; fp32 on CPU).
        scheduler: inference scheduler (see ``make_scheduler``; default: ``cfg.scheduler``).
        image_size: side of returned images (default: the training cohort's image size).
    """

    def __init__(
        self,
        model: str | os.PathLike | SDComponents,
        *,
        bank: SourceBank | None = None,
        cfg: SDConfig | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        scheduler: str | None = None,
        image_size: int | None = None,
    ):
        # diffusers (seconds) loads with a model, not with this module (train-sd --help, pyfunc)
        from diffusers import StableDiffusionImg2ImgPipeline

        if isinstance(model, SDComponents):
            comps, self.card, self.model_dir = model, {}, None
            first = next(comps.unet.parameters())
            self.device, self.dtype = first.device, first.dtype
        else:
            self.device = torch.device(device) if device is not None else default_device()
            if dtype is None:
                dtype = torch.float16 if self.device.type == "cuda" else torch.float32
            self.dtype = dtype
            self.model_dir = check_sd_dir(model)
            comps = load_components(self.model_dir, torch_dtype=dtype)
            self.card = read_card(self.model_dir)
            if bank is None:
                bank = SourceBank.load(self.model_dir)
        self.cfg = cfg or card_config(self.card)
        self.scheduler_name = scheduler or self.cfg.scheduler
        comps = replace(comps, scheduler=make_scheduler(self.scheduler_name, comps.scheduler))
        self.components = comps
        self.bank = bank
        self.image_size = int(
            image_size
            or self.card.get("cohort_image_size")
            or (bank.images.shape[-1] if bank is not None and len(bank) else comps.resolution)
        )
        self.txt2img = comps.pipeline()
        if not isinstance(model, SDComponents):
            self.txt2img.to(self.device)
        self.img2img = StableDiffusionImg2ImgPipeline(
            **self.txt2img.components, requires_safety_checker=False
        )
        for p in (self.txt2img, self.img2img):
            p.set_progress_bar_config(disable=True)
        self._timestep_cache: dict[int, torch.Tensor | None] = {}

    # --- properties -------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The model's own tokenizer (its limit is the prompt limit)."""
        return self.components.tokenizer

    @property
    def resolution(self) -> int:
        """Pixel resolution the model generates at (before resizing to ``image_size``)."""
        return self.components.resolution

    # --- Generator protocol -----------------------------------------------------------------
    def method(self, mode: str | None = None) -> str:
        """The synthetic-set method of ``mode`` (SD1..SD4; a mode is required)."""
        if mode is None:
            raise GeneratorError(f"the SD generator needs a mode: one of {', '.join(MODES)}")
        return check_mode(str(mode).upper())

    def describe(self) -> dict[str, Any]:
        """Model and sampling provenance."""
        return {
            "source": self.card.get("source", ""),
            "base_model": self.card.get("base_model", ""),
            "train_steps": self.card.get("train_steps"),
            "resolution": self.resolution,
            "image_size": self.image_size,
            "scheduler": self.scheduler_name,
            "num_inference_steps": self.cfg.num_inference_steps,
            "guidance_scale": self.cfg.guidance_scale,
            "strength": self.cfg.strength,
            "max_retries": self.cfg.max_retries,
            "black_threshold": self.cfg.black_threshold,
            "content_hash": self.card.get("cohort_hash", ""),
            "cohort_hash": self.card.get("cohort_hash", ""),  # the name SD models used first
            "bank_counts": self.bank.counts() if self.bank is not None else {},
        }

    def sample(
        self,
        labels: Sequence[int | str],
        seeds: Sequence[int],
        masks: torch.Tensor | None = None,
        *,
        mode: str | None = None,
        prompts: Sequence[str] | None = None,
        images: torch.Tensor | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        strength: float | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> GeneratedBatch:
        """One image per (label, seed) in ``mode``; conditions from the request or the bank.

        Args:
            labels: class names or indices (select the source case when none is given).
            seeds: one per image; the same (label, seed, inputs) give the same image.
            masks: SD4 masks ``[N, 1, S, S]`` (default: the source case's mask).
            mode: SD1..SD4 (required).
            prompts: one per image for SD1 / SD2 / SD4 (default: the source case's prompt).
            images: SD1 / SD3 start images ``[N, 1, S, S]`` in [0, 1] (default: source image).
            steps: denoising steps (default ``cfg.num_inference_steps``, paper 50; img2img runs
                ``int(steps * strength)`` of them, as diffusers does).
            guidance_scale, strength, batch_size: override the defaults.
            progress: tqdm bar over batches.

        Returns:
            GeneratedBatch with images ``[N, 1, image_size, image_size]`` and the columns
            source_id, prompt, retries, collapsed, steps, guidance_scale, strength, scheduler
            (the seed column of the set is the requested seed; ``final_seed`` the one used).

        Raises:
            GeneratorError: unknown mode / label, mismatched lengths, no bank for a missing input,
                settings that run no denoising step (``denoising_steps``).
            PromptError: a prompt over the tokenizer limit (unless truncation is enabled).
        """
        mode = self.method(mode)
        self.denoising_steps(mode, steps, strength)
        idx = [label_index(lbl) for lbl in labels]
        seeds = [int(s) for s in seeds]
        n = len(idx)
        if len(seeds) != n:
            raise GeneratorError(f"{n} labels but {len(seeds)} seeds; give one per image")
        for name, given in (("prompts", prompts), ("images", images), ("masks", masks)):
            if given is not None and len(given) != n:
                raise GeneratorError(f"{name}: {len(given)} given for {n} images")
        cond = self._conditions(mode, idx, seeds, prompts, images, masks)
        cfg = _override(
            self.cfg,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            strength=strength,
            gen_batch_size=batch_size,
        )
        res = self.generate(
            mode,
            seeds,
            prompts=cond.prompts,
            images=cond.images,
            masks=cond.masks,
            cfg=cfg,
            size=self.image_size,
            case_ids=cond.source_ids,
            progress=progress,
        )
        return GeneratedBatch(images=res.images, columns=self._columns(mode, cond, res, cfg))

    def denoising_steps(
        self, mode: str, steps: int | None = None, strength: float | None = None
    ) -> int:
        """The denoising steps ``mode`` runs with ``steps`` and ``strength`` (default: this
        model's), as diffusers runs them: all the scheduler's timesteps for SD2; for img2img (SD1,
        SD3, SD4) those left after skipping the first ``steps - int(steps * strength)``.

        Raises:
            GeneratorError: none would run, or the scheduler cannot take ``steps`` within its
                training timesteps (diffusers would fail inside the pipeline); the message says
                which steps or strength work.
        """
        mode = check_mode(mode)
        steps = int(self.cfg.num_inference_steps if steps is None else steps)
        strength = float(self.cfg.strength if strength is None else strength)
        if steps < 1 or not 0 < strength <= 1:
            raise GeneratorError(
                f"steps={steps}, strength={strength:g}: need steps >= 1 and 0 < strength <= 1"
            )
        most = self._most_steps(steps)
        scheduler = self.txt2img.scheduler
        if steps > most:
            raise GeneratorError(
                f"steps={steps} is more than this model's scheduler runs "
                f"({type(scheduler).__name__}, {scheduler.config.num_train_timesteps} training "
                f"timesteps); use steps <= {most}"
            )
        run = self._runs(mode, steps, strength)
        if run >= 1:
            return run
        skipped = steps - int(steps * strength)
        raise GeneratorError(
            f"{mode} runs no denoising step at steps {steps} and strength {strength:g} (img2img "
            f"skips the first steps - int(steps x strength) = {skipped} of the scheduler's "
            f"{len(self._timesteps(steps))} timesteps); use {self._fixes(mode, steps, strength)}"
        )

    def _runs(self, mode: str, steps: int, strength: float) -> int:
        """Timesteps the pipeline of ``mode`` runs (diffusers' img2img ``get_timesteps``)."""
        timesteps = self._timesteps(steps)
        if timesteps is None:
            return 0
        if mode == "SD2":
            return len(timesteps)
        start = steps - min(int(steps * strength), steps)
        return len(timesteps[start * self.txt2img.scheduler.order :])

    def _fixes(self, mode: str, steps: int, strength: float) -> str:
        """The least steps (at ``strength``) and least strength (at ``steps``, in steps of 0.001)
        that run a denoising step; both searches are binary (runs grow with either)."""
        fixes = []
        most = self._most_steps(MAX_STEPS)
        if self._runs(mode, most, strength) >= 1:
            low, high = steps + 1, most
            while low < high:
                mid = (low + high) // 2
                low, high = (low, mid) if self._runs(mode, mid, strength) >= 1 else (mid + 1, high)
            fixes.append(f"steps >= {low} at strength {strength:g}")
        low, high = 1, 1000
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if self._runs(mode, steps, mid / 1000) >= 1 else (mid + 1, high)
        fixes.append(f"strength {'>= ' * (low < 1000)}{low / 1000:g} at steps {steps}")
        return ", or ".join(fixes)

    def _most_steps(self, steps: int) -> int:
        """``steps`` if the scheduler takes that many, else the most it takes (binary search)."""
        if self._timesteps(steps) is not None:
            return steps
        low, high = 1, steps - 1
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self._timesteps(mid) is not None else (low, mid - 1)
        return low

    def _timesteps(self, steps: int) -> torch.Tensor | None:
        """The scheduler's timesteps for ``steps`` (cached); None unless they are some and lie
        within its training timesteps."""
        if steps not in self._timestep_cache:
            scheduler = copy.deepcopy(self.txt2img.scheduler)  # the pipelines' own is untouched
            try:
                scheduler.set_timesteps(steps)
                t = scheduler.timesteps
            except ValueError:  # more steps than training timesteps
                t = None
            last = int(scheduler.config.num_train_timesteps)
            ok = t is not None and len(t) > 0 and float(t.min()) >= 0 and float(t.max()) < last
            self._timestep_cache[steps] = t if ok else None
        return self._timestep_cache[steps]

    # --- conditions and provenance ----------------------------------------------------------
    def _conditions(
        self,
        mode: str,
        labels: list[int],
        seeds: list[int],
        prompts: Sequence[str] | None,
        images: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> _Conditions:
        """Fill the conditions ``mode`` needs and the request lacks from the bank's cases."""
        need_prompt = mode in ("SD1", "SD2", "SD4") and prompts is None
        need_image = mode in ("SD1", "SD3") and images is None
        need_mask = mode == "SD4" and masks is None
        bank = self.bank
        if not (need_prompt or need_image or need_mask):
            return _Conditions(prompts, images, masks, ["request"] * len(labels))
        if bank is None or len(bank) == 0:
            what = "prompt" if need_prompt else "image" if need_image else "mask"
            raise GeneratorError(
                f"{mode} needs a {what} per image and this generator has no source bank loaded "
                "(the registered model holds none; it stays with the training run as the "
                "artifact condition_bank/): pass it in the request, or load the model with "
                "access to that run"
            )
        rows = [bank.pick(c, s, need_mask=need_mask) for c, s in zip(labels, seeds)]
        sel = torch.as_tensor(rows, dtype=torch.long)
        return _Conditions(
            prompts=[bank.prompts[r] for r in rows] if need_prompt else prompts,
            images=bank.images[sel] if need_image else images,
            masks=bank.masks[sel] if need_mask else masks,
            source_ids=[bank.case_ids[r] for r in rows],
        )

    def _columns(
        self, mode: str, cond: _Conditions, res: GenerationResult, cfg: SDConfig
    ) -> dict[str, list[Any]]:
        """The manifest columns of a ``sample`` call."""
        n = len(res.seeds)
        prompts = cond.prompts
        used_prompts = list(prompts) if prompts is not None and mode != "SD3" else [""] * n
        return {
            "source_id": cond.source_ids,
            "prompt": used_prompts,
            "final_seed": res.seeds,
            "retries": res.retries,
            "collapsed": res.still_collapsed,
            "steps": [cfg.num_inference_steps] * n,
            "guidance_scale": [cfg.guidance_scale] * n,
            "strength": [cfg.strength if mode != "SD2" else ""] * n,
            "scheduler": [self.scheduler_name] * n,
        }

    # --- the pipelines ----------------------------------------------------------------------
    def check_prompts(
        self, prompts: list[str], case_ids: list[str] | None = None, truncate: bool = False
    ) -> list[str]:
        """``tokenizer.check_prompts`` with this model's tokenizer."""
        return check_prompts(prompts, self.tokenizer, case_ids, truncate=truncate)

    @torch.no_grad()
    def _call(
        self,
        mode: str,
        prompts: list[str],
        init: torch.Tensor | None,
        seeds: list[int],
        cfg: SDConfig,
    ) -> torch.Tensor:
        """One pipeline call for a batch; returns [B, 1, R, R] in [0, 1] (R = resolution)."""
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        common = {
            "prompt": prompts,
            "num_inference_steps": cfg.num_inference_steps,
            "guidance_scale": cfg.guidance_scale,
            "generator": gens,
            "output_type": "pt",
        }
        if mode == "SD2":
            r = self.resolution
            out = self.txt2img(height=r, width=r, **common).images
        else:
            assert init is not None
            image = init.repeat(1, self.components.image_channels, 1, 1).to(self.device, self.dtype)
            out = self.img2img(image=image, strength=cfg.strength, **common).images
        return out.float().mean(dim=1, keepdim=True).cpu()

    def _prompt_list(
        self,
        mode: str,
        n: int,
        prompts: Sequence[str] | None,
        case_ids: Sequence[str] | None,
        cfg: SDConfig,
    ) -> list[str]:
        """The prompt of each image (empty for SD3), checked against the tokenizer limit."""
        if mode == "SD3":
            return [""] * n
        assert prompts is not None
        ids = list(case_ids) if case_ids is not None else None
        return self.check_prompts([str(p) for p in prompts], ids, cfg.truncate_prompts)

    def _init_images(
        self, mode: str, images: torch.Tensor | None, masks: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The img2img start images at the model resolution (None for SD2)."""
        r = self.resolution
        if mode in ("SD1", "SD3"):
            assert images is not None
            return resize_images(to_unit(images), r)
        if mode == "SD4":
            assert masks is not None
            m = torch.as_tensor(masks).float()
            m = m[:, None] if m.ndim == 3 else m
            return resize_masks((m > 0.5).float(), r)
        return None

    def _retry_collapsed(
        self,
        mode: str,
        out: torch.Tensor,
        plist: list[str],
        init: torch.Tensor | None,
        seeds: list[int],
        cfg: SDConfig,
    ) -> tuple[list[int], list[int], torch.Tensor]:
        """Regenerate collapsed outputs in place with ``retry_seed(seed, attempt)``.

        Returns:
            (the seed each image finally used, retries per image, bool [N] still collapsed).
        """
        used = list(seeds)
        retries = [0] * len(seeds)
        bs = max(1, int(cfg.gen_batch_size))
        bad = collapsed(out, cfg.black_threshold, cfg.collapse_std)
        for attempt in range(1, cfg.max_retries + 1):
            todo = torch.nonzero(bad).flatten().tolist()
            if not todo:
                break
            log.info(
                "%s: %d black/collapsed output(s); retry %d/%d with new seeds",
                mode,
                len(todo),
                attempt,
                cfg.max_retries,
            )
            for i in todo:
                used[i] = retry_seed(seeds[i], attempt)
                retries[i] += 1
            for start in range(0, len(todo), bs):
                chunk = todo[start : start + bs]
                sub = None if init is None else init[chunk]
                out[chunk] = self._call(
                    mode, [plist[i] for i in chunk], sub, [used[i] for i in chunk], cfg
                )
            bad = collapsed(out, cfg.black_threshold, cfg.collapse_std)
        if bool(bad.any()):
            log.warning(
                "%s: %d output(s) still black/collapsed after %d retries (kept)",
                mode,
                int(bad.sum()),
                cfg.max_retries,
            )
        if sum(retries):
            log.info(
                "%s: %d retry generation(s) for %d image(s)",
                mode,
                sum(retries),
                sum(1 for x in retries if x),
            )
        return used, retries, bad

    def generate(
        self,
        mode: str,
        seeds: Sequence[int],
        prompts: Sequence[str] | None = None,
        images: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        cfg: SDConfig | None = None,
        size: int | None = None,
        case_ids: Sequence[str] | None = None,
        progress: bool = False,
    ) -> GenerationResult:
        """Generate one image per seed, batched, regenerating black / collapsed outputs.

        An output is collapsed when ``collapsed`` says so; it is regenerated with the seed
        ``retry_seed(seed, attempt)`` for attempt 1..``cfg.max_retries`` (batched together),
        and the retries are counted and logged. One still collapsed after that is kept (logged).

        Args:
            mode: SD1..SD4.
            seeds: one per image.
            prompts: one per image (SD1, SD2, SD4; SD3 uses the empty prompt).
            images: [N, 1, S, S] in [0, 1] (SD1, SD3).
            masks: [N, 1, S, S] 0/1 (SD4; the mask becomes the img2img start image).
            cfg: sampling settings (default: this generator's).
            size: output side length (default: the model resolution).
            case_ids: names used in prompt errors.
            progress: tqdm bar over batches.

        Returns:
            GenerationResult (images in [0, 1], the seed each image finally used, retries).

        Raises:
            GeneratorError: missing or mis-shaped inputs for the mode.
            PromptError: a prompt over the tokenizer limit (unless ``cfg.truncate_prompts``).
        """
        check_mode(mode)
        cfg = cfg or self.cfg
        seeds = [int(s) for s in seeds]
        n = _request_size(mode, len(seeds), prompts, images, masks)
        r = self.resolution
        plist = self._prompt_list(mode, n, prompts, case_ids, cfg)
        init = self._init_images(mode, images, masks)
        out = torch.empty(n, 1, r, r)
        bs = max(1, int(cfg.gen_batch_size))
        for start in tqdm(range(0, n, bs), desc=f"SD {mode}", disable=not progress):
            sl = slice(start, min(n, start + bs))
            out[sl] = self._call(
                mode, plist[sl], None if init is None else init[sl], seeds[sl], cfg
            )
        used, retries, bad = self._retry_collapsed(mode, out, plist, init, seeds, cfg)
        out = torch.nan_to_num(out, nan=0.0).clamp(0, 1)
        if size is not None and size != r:
            out = resize_images(out, int(size)).clamp(0, 1)
        return GenerationResult(out, used, retries, [bool(b) for b in bad])


def _override(cfg: SDConfig, **values: Any) -> SDConfig:
    """``cfg`` with the non-None ``values`` replaced (validated by SDConfig)."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return cfg
    try:
        return replace(cfg, **given)
    except ConfigError as exc:
        raise GeneratorError(str(exc)) from exc


def _request_size(
    mode: str,
    n: int,
    prompts: Sequence[str] | None,
    images: torch.Tensor | None,
    masks: torch.Tensor | None,
) -> int:
    """Number of rows of a request, checking the inputs each mode needs."""
    needs = {
        "SD1": ("prompts", "images"),
        "SD2": ("prompts",),
        "SD3": ("images",),
        "SD4": ("prompts", "masks"),
    }[mode]
    given = {"prompts": prompts, "images": images, "masks": masks}
    missing = [k for k in needs if given[k] is None]
    if missing:
        raise GeneratorError(f"{mode} ({MODE_DESCRIPTIONS[mode]}) needs {', '.join(missing)}")
    sizes = {k: len(given[k]) for k in needs}  # type: ignore[arg-type]
    sizes["seeds"] = n
    if len(set(sizes.values())) != 1:
        raise GeneratorError(f"{mode}: inputs have different lengths {sizes}")
    for k in ("images", "masks"):
        if k in needs:
            t = torch.as_tensor(given[k])
            square = t.shape[-1] == t.shape[-2]
            if t.ndim not in (3, 4) or (t.ndim == 4 and t.shape[1] != 1) or not square:
                raise GeneratorError(
                    f"{mode}: {k} must be square grayscale [N, 1, S, S], got {tuple(t.shape)}"
                )
    if n == 0:
        raise GeneratorError(f"{mode}: empty request")
    return n
