"""Structured scintigraphic findings: the fixed questions a report is asked.

The phantom draws a ``Findings`` per case and writes it up as free text in a center's style
(``thyroaug.phantom.reports``); ``thyroaug.reports.prompts`` reads free text back into a
``Findings`` and renders the prompt. Every field is optional (``None`` = the report does not say).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

GlandSize = Literal["small", "normal", "mildly enlarged", "enlarged", "markedly enlarged"]
Uptake = Literal["absent", "very low", "low", "normal", "increased", "intense"]
Distribution = Literal["homogeneous", "mildly heterogeneous", "heterogeneous", "patchy"]
NoduleKind = Literal["hot", "cold", "warm", "mixed"]
Side = Literal["right", "left", "bilateral", "isthmus"]
Background = Literal["low", "normal", "high"]
Salivary = Literal["faint", "normal", "prominent"]
Impression = Literal["DG", "NG", "NL", "TI"]

FIELD_VALUES: dict[str, tuple[str, ...]] = {
    "gland_size": ("small", "normal", "mildly enlarged", "enlarged", "markedly enlarged"),
    "uptake": ("absent", "very low", "low", "normal", "increased", "intense"),
    "distribution": ("homogeneous", "mildly heterogeneous", "heterogeneous", "patchy"),
    "nodule_kind": ("hot", "cold", "warm", "mixed"),
    "nodule_side": ("right", "left", "bilateral", "isthmus"),
    "background": ("low", "normal", "high"),
    "salivary": ("faint", "normal", "prominent"),
    "impression": ("DG", "NG", "NL", "TI"),
}


@dataclass(frozen=True)
class Findings:
    """Answers to the fixed report questions (None = not stated)."""

    gland_size: GlandSize | None = None
    uptake: Uptake | None = None
    distribution: Distribution | None = None
    nodules: int | None = None  # 0 = explicitly none; 3 means "three or more / multiple"
    nodule_kind: NoduleKind | None = None
    nodule_side: Side | None = None
    background: Background | None = None
    salivary: Salivary | None = None
    pyramidal_lobe: bool | None = None
    impression: Impression | None = None

    def __post_init__(self) -> None:
        for name, allowed in FIELD_VALUES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"Findings.{name}={value!r}; allowed: {', '.join(allowed)}")
        if self.nodules is not None and self.nodules < 0:
            raise ValueError(f"Findings.nodules={self.nodules}; must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for tables / JSON)."""
        return asdict(self)
