"""The physicians' writing styles of the phantom's nine centers (``CENTER_STYLES``)."""

from __future__ import annotations

from dataclasses import dataclass

from thyroaug.errors import ConfigError

LAYOUTS: tuple[str, ...] = ("headed", "telegraphic", "bullets", "narrative", "letter")


@dataclass(frozen=True)
class ReportStyle:
    """One physician's way of writing a scan report.

    Attributes:
        name: Unique style name (``"<center>-<layout>"``).
        layout: One of ``LAYOUTS``.
        british: British spelling (goitre, visualised) instead of US.
        number_words: Write nodule counts and times as words ("two", "twenty minutes").
        abbreviations: Use abbreviations (Tc-99m, rt/lt lobe, bkg, SGs, MNG, IV, min).
        history_rate: Probability of a clinical history / indication line.
        percent_rate: Probability of stating the uptake percentage.
        omit_rate: Probability of leaving an unremarkable finding unsaid (normal background,
            normal salivary glands, no pyramidal lobe).
        hedge_rate: Probability of hedging the impression ("probably", "in keeping with").
    """

    name: str
    layout: str
    british: bool = False
    number_words: bool = False
    abbreviations: bool = False
    history_rate: float = 0.4
    percent_rate: float = 0.0
    omit_rate: float = 0.3
    hedge_rate: float = 0.4

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"ReportStyle {self.name}: layout {self.layout!r} not in {LAYOUTS}")


def _styles(center: str, *specs: tuple[str, dict]) -> tuple[ReportStyle, ...]:
    return tuple(ReportStyle(f"{center}-{layout}", layout, **kw) for layout, kw in specs)


CENTER_STYLES: dict[str, tuple[ReportStyle, ...]] = {
    "A": _styles("A", ("headed", {}), ("narrative", {"number_words": True, "hedge_rate": 0.6})),
    "B": _styles(
        "B",
        ("telegraphic", {"abbreviations": True, "omit_rate": 0.5}),
        ("headed", {"british": True, "percent_rate": 0.3}),
    ),
    "C": _styles(
        "C",
        ("narrative", {"british": True, "number_words": True}),
        ("letter", {"british": True, "number_words": True, "history_rate": 1.0}),
        ("headed", {"british": True}),
    ),
    "D": _styles(
        "D",
        ("bullets", {"percent_rate": 0.5, "omit_rate": 0.1}),
        ("telegraphic", {"abbreviations": True, "percent_rate": 0.3}),
    ),
    "E": _styles(
        "E",
        ("headed", {"abbreviations": True, "percent_rate": 0.6}),
        ("bullets", {"british": True, "omit_rate": 0.2}),
        ("narrative", {"hedge_rate": 0.2}),
    ),
    "F": _styles(
        "F",
        ("narrative", {"british": True, "abbreviations": True, "history_rate": 0.6}),
        ("telegraphic", {"british": True, "abbreviations": True, "omit_rate": 0.6}),
    ),
    "G": _styles(
        "G",
        ("letter", {"number_words": True, "history_rate": 1.0}),
        ("headed", {"number_words": True}),
    ),
    "H": _styles(
        "H",
        ("bullets", {"abbreviations": True, "percent_rate": 0.4}),
        ("narrative", {"british": True, "number_words": True, "hedge_rate": 0.7}),
        ("telegraphic", {"british": True, "abbreviations": True}),
    ),
    "I": _styles(
        "I",
        ("headed", {"percent_rate": 0.2, "history_rate": 0.7}),
        ("narrative", {"abbreviations": True}),
    ),
}
"""Writing styles per center (each center's physicians use two or three)."""
