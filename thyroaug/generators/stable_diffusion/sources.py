"""The source bank: the training cases Stable Diffusion sampling starts from.

Its files are ``sources.safetensors`` + ``sources.csv``, written beside the model (the training
run's ``condition_bank/`` artifact, ``generators.banks``), inside the model folder only with
``--embed-sources``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from thyroaug import CLASSES
from thyroaug.errors import GeneratorError, PromptError
from thyroaug.generators.base import ConditionBank
from thyroaug.generators.stable_diffusion.components import to_unit

SOURCES_TENSORS = "sources.safetensors"
SOURCES_TABLE = "sources.csv"


@dataclass
class SourceBank(ConditionBank):
    """The training cases SD conditions on: images, masks, prompts, labels and case ids.

    SD1 / SD3 start from a case image, SD4 from a case mask (drawn among the cases with one), SD1 /
    SD2 / SD4 use the case's prompt; ``ConditionBank.pick`` draws the case for (class, seed).
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    case_ids: list[str]
    prompts: list[str]
    has_mask: list[bool]
    condition_name: ClassVar[str] = "source case"

    def __post_init__(self) -> None:
        n = len(self.case_ids)
        sizes = {len(self.images), len(self.masks), len(self.labels), len(self.prompts)}
        if sizes != {n} or len(self.has_mask) != n:
            raise GeneratorError("SourceBank: images, masks, labels, prompts, ids differ in length")

    def eligible(self, need_mask: bool = False) -> np.ndarray:
        """Bool ``[M]``: every case, or only the cases with a mask when ``need_mask`` (SD4)."""
        if need_mask:
            return np.asarray(self.has_mask, dtype=bool)
        return np.ones(len(self), dtype=bool)

    @classmethod
    def from_cohort(cls, cohort: Any, split: str | None = "train") -> SourceBank:
        """The cases of one split of a ``PreparedCohort`` (all rows when ``split`` is None)."""
        part = cohort.subset(split) if split else cohort
        table = part.table.reset_index(drop=True)
        if "prompt" not in table.columns:
            raise PromptError("the cohort table has no 'prompt' column")
        has = (
            table["has_mask"].astype(bool).tolist()
            if "has_mask" in table.columns
            else [bool(m.any()) for m in part.masks]
        )
        return cls(
            images=to_unit(part.images),
            masks=(torch.as_tensor(part.masks) > 0).to(torch.uint8),
            labels=torch.as_tensor(part.labels, dtype=torch.long),
            case_ids=table["case_id"].astype(str).tolist(),
            prompts=table["prompt"].fillna("").astype(str).tolist(),
            has_mask=has,
        )

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``sources.safetensors`` and ``sources.csv`` into ``folder``."""
        folder = Path(folder)
        save_file(
            {
                "images": self.images.float().contiguous(),
                "masks": self.masks.to(torch.uint8).contiguous(),
                "labels": self.labels.long().contiguous(),
            },
            str(folder / SOURCES_TENSORS),
        )
        pd.DataFrame(
            {
                "case_id": self.case_ids,
                "label": [CLASSES[int(i)] for i in self.labels],
                "has_mask": self.has_mask,
                "prompt": self.prompts,
            }
        ).to_csv(folder / SOURCES_TABLE, index=False)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SourceBank | None:
        """Read a bank written by ``save`` (None when ``folder`` holds none)."""
        folder = Path(folder)
        if not (folder / SOURCES_TENSORS).exists():
            return None
        t = load_file(str(folder / SOURCES_TENSORS))
        table = pd.read_csv(folder / SOURCES_TABLE, keep_default_na=False, dtype=str)
        return cls(
            images=t["images"],
            masks=t["masks"],
            labels=t["labels"],
            case_ids=table["case_id"].tolist(),
            prompts=table["prompt"].tolist(),
            has_mask=[v.lower() == "true" for v in table["has_mask"]],
        )
