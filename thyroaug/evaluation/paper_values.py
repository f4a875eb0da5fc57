"""The paper's reported numbers (Sabouri, Hajianfar et al., Physica Medica 2026): Table 1 sizes,
Table 2 (external-set classification, in %), Table 3 (FID / KID), as our metric keys.

Kept as the paper prints them (rows copied verbatim below) and parsed once, so a reader can check
them against the paper line by line.
"""

from __future__ import annotations

from thyroaug.contract import CLASSES

TRAIN_VAL_CASES = 2555
"""Centers A-F (432 + 243 + 648 + 598 + 319 + 315), split 9:1 into training and validation."""
EXTERNAL_CASES = 399
"""Centers G (71), H (142) and I (186)."""
PER_CLASS_SYNTHETIC = 1000
"""Generated images per class and method (section 3.2)."""

_TABLE2 = """
| O | 70/65/53/96 | 72/86/31/91 | 71/74/39/93 | 92/91/91 | 73/71/72 | 73/70/73 | 73/69/71 |
| CA | 75/70/55/92 | 62/77/62/97 | 68/73/58/95 | 93/92/92 | 74/73/75 | 74/74/74 | 74/74/74 |
| SD1 | 80/74/53/92 | 72/71/59/98 | 76/72/56/95 | 93/92/92 | 76/74/76 | 76/75/76 | 76/75/76 |
| SD2 | 76/57/45/95 | 70/68/53/74 | 73/62/49/83 | 88/87/88 | 67/68/70 | 67/66/67 | 67/67/68 |
| SD3 | 55/27/32/54 | 48/32/23/66 | 51/29/27/59 | 68/67/67 | 44/42/44 | 44/42/44 | 44/42/43 |
| SD4 | 88/66/42/58 | 44/35/64/100 | 58/46/50/74 | 82/86/86 | 59/63/67 | 59/61/59 | 59/57/58 |
| FM | 70/54/48/96 | 67/64/54/76 | 69/59/51/85 | 89/88/88 | 66/67/69 | 66/65/66 | 66/66/67 |
| O+CA | 73/59/61/99 | 72/83/41/89 | 72/69/49/94 | 92/92/92 | 73/73/74 | 73/71/73 | 73/71/73 |
| O+SD1 | 74/67/55/96 | 70/85/46/89 | 72/75/50/92 | 92/92/92 | 74/73/74 | 74/73/74 | 74/72/74 |
| O+SD2 | 78/60/61/98 | 67/87/49/89 | 72/71/54/93 | 92/92/92 | 74/74/76 | 74/73/74 | 74/73/74 |
| O+SD3 | 72/62/57/93 | 71/83/39/87 | 72/71/46/90 | 90/90/90 | 72/71/72 | 72/70/72 | 72/70/71 |
| O+SD4 | 76/62/59/95 | 66/87/47/89 | 71/73/53/92 | 92/92/92 | 73/73/74 | 73/72/73 | 73/72/73 |
| O+FM | 74/74/68/93 | 81/76/54/95 | 77/75/60/94 | 95/93/94 | 78/77/78 | 78/76/78 | 78/77/78 |
| O+SD1+CA | 75/64/54/96 | 66/82/50/91 | 70/72/52/93 | 93/92/93 | 73/72/74 | 73/72/73 | 73/72/73 |
| O+SD2+CA | 74/65/62/94 | 66/82/54/91 | 70/73/58/92 | 92/92/92 | 74/73/74 | 74/73/74 | 74/73/74 |
| O+SD3+CA | 77/63/60/91 | 65/78/58/90 | 71/70/59/90 | 92/91/91 | 73/73/74 | 73/73/73 | 73/72/73 |
| O+SD4+CA | 72/63/58/95 | 63/82/53/90 | 67/72/55/92 | 92/91/92 | 72/72/73 | 72/72/72 | 72/72/72 |
| O+FM+CA | 79/68/63/97 | 73/84/58/90 | 76/75/61/93 | 93/92/92 | 77/77/78 | 77/76/77 | 77/76/77 |
"""
_TABLE2_COLUMNS = (
    [f"precision_{c}" for c in CLASSES],
    [f"recall_{c}" for c in CLASSES],
    [f"f1_{c}" for c in CLASSES],
    ["auc_micro", "auc_macro", "auc_weighted"],
    ["precision_micro", "precision_macro", "precision_weighted"],
    ["recall_micro", "recall_macro", "recall_weighted"],
    ["f1_micro", "f1_macro", "f1_weighted"],
)

_TABLE3 = """
| DG | 4.75 | 6.77 | 2.94 | 2.31 | 1.56 | 1.94 | 10.30 | 15.40 | 0.96 | 0.80 |
| NG | 6.22 | 10.28 | 3.27 | 2.66 | 2.95 | 4.41 | 22.07 | 38.34 | 0.74 | 0.95 |
| NL | 4.56 | 7.14 | 1.75 | 2.05 | 3.39 | 5.68 | 18.68 | 36.74 | 0.85 | 2.08 |
| TI | 2.73 | 3.01 | 9.24 | 30.02 | 4.15 | 8.11 | 22.37 | 50.50 | 1.97 | 3.39 |
| Overall | 4.17 | 4.99 | 3.88 | 2.61 | 2.77 | 4.66 | 17.99 | 33.59 | 0.66 | 0.83 |
"""
_TABLE3_METHODS = ("SD1", "SD2", "SD3", "SD4", "FM")


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.split("\n")
            if line.strip()]  # fmt: skip


def _table2() -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, *cells in _rows(_TABLE2):
        values: dict[str, float] = {}
        for keys, cell in zip(_TABLE2_COLUMNS, cells):
            values.update({k: int(v) / 100 for k, v in zip(keys, cell.split("/"))})
        values["accuracy"] = values["recall_micro"]  # single-label: micro recall = accuracy
        out[name] = values
    return out


def _table3() -> dict[tuple[str, str], dict[str, float]]:
    out = {}
    for group, *cells in _rows(_TABLE3):
        group = "overall" if group == "Overall" else group
        for i, method in enumerate(_TABLE3_METHODS):
            out[(method, group)] = {"fid": float(cells[2 * i]), "kid": float(cells[2 * i + 1])}
    return out


TABLE2: dict[str, dict[str, float]] = _table2()
"""Scenario -> {metric key (``metrics.metric_names`` names, plus ``accuracy``): value in [0, 1]}.
Class-wise AUCs are not reported."""
TABLE3: dict[tuple[str, str], dict[str, float]] = _table3()
"""(method, group: DG / NG / NL / TI / overall) -> {"fid", "kid"} as printed (Inception features;
the KID scale is not stated in the paper)."""
