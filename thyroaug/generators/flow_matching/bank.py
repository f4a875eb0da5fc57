"""The mask bank: training masks by class, from which mask-conditioned FM synthesis draws."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from thyroaug.contract import CLASSES
from thyroaug.errors import GeneratorError
from thyroaug.generators.base import ConditionBank


@dataclass
class MaskBank(ConditionBank):
    """Training masks by class, from which mask-conditioned synthesis draws its conditions.

    Attributes:
        masks: uint8 ``[M, 1, S, S]`` (0/1).
        labels: int64 ``[M]`` class index of each mask's case.
        case_ids: the case id of each mask (recorded as ``source_id`` in manifests).
    """

    masks: torch.Tensor
    labels: torch.Tensor
    case_ids: list[str]
    condition_name: ClassVar[str] = "training mask"

    def __post_init__(self) -> None:
        if not (len(self.masks) == len(self.labels) == len(self.case_ids)):
            raise GeneratorError("MaskBank: masks, labels and case_ids differ in length")

    def save(self, folder: str | Path) -> None:
        """Write ``masks.safetensors`` (bit-packed) and ``masks.csv`` into ``folder``."""
        folder = Path(folder)
        arr = self.masks.numpy().astype(np.uint8)
        packed = np.packbits(arr.reshape(len(arr), -1) > 0, axis=1)
        save_file(
            {"packed": torch.from_numpy(packed), "labels": self.labels.long().contiguous()},
            str(folder / "masks.safetensors"),
            metadata={"shape": ",".join(str(s) for s in arr.shape)},
        )
        pd.DataFrame(
            {"case_id": self.case_ids, "label": [CLASSES[int(i)] for i in self.labels]}
        ).to_csv(folder / "masks.csv", index=False)

    @classmethod
    def load(cls, folder: str | Path) -> MaskBank:
        """Read a bank written by ``save``."""
        folder = Path(folder)
        with safe_open(str(folder / "masks.safetensors"), framework="pt") as f:
            shape = tuple(int(s) for s in (f.metadata() or {})["shape"].split(","))
            packed = f.get_tensor("packed").numpy()
            labels = f.get_tensor("labels")
        n = int(np.prod(shape[1:]))
        masks = np.unpackbits(packed, axis=1, count=n).reshape(shape).astype(np.uint8)
        table = pd.read_csv(folder / "masks.csv", keep_default_na=False, dtype=str)
        return cls(torch.from_numpy(masks), labels, table["case_id"].tolist())
