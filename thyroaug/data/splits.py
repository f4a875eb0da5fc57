"""Train / val / external splits: by center first, then a stratified, patient-grouped 9:1 split.

Centers A-F train, G-I external (paper Sec. 3.2). The greedy val choice, its +-1 per-class
contract and the carve from a manifest that names no val case: ``docs/data.md``, "Splits".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from thyroaug.contract import CLASSES
from thyroaug.errors import ConfigError, SplitError

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "external")


def parse_centers(centers: str | Sequence[str]) -> tuple[str, ...]:
    """``"ABCDEF"`` -> one center per letter; ``"A,B"`` or a list -> the listed names."""
    if isinstance(centers, str):
        text = centers.strip()
        if "," in text or " " in text:
            items = [c.strip() for c in text.replace(" ", ",").split(",")]
        else:
            items = list(text)
        return tuple(c for c in items if c)
    return tuple(str(c).strip() for c in centers if str(c).strip())


def check_splits(table: pd.DataFrame) -> None:
    """Raise SplitError if a split value is invalid or a patient's cases span several splits."""
    bad = table[~table["split"].isin(SPLITS)]
    problems = [
        f"case {cid}: split {split!r} is not one of {', '.join(SPLITS)}"
        for cid, split in zip(bad["case_id"], bad["split"])
    ]
    for pid, group in table.groupby("patient_id", sort=True):
        if group["split"].nunique() > 1:
            cases = ", ".join(f"{c} ({s})" for c, s in zip(group["case_id"], group["split"]))
            problems.append(
                f"patient {pid} is in more than one split: cases {cases}; "
                "a patient's cases must share one split"
            )
    if problems:
        raise SplitError("invalid splits:\n" + "\n".join(f"  - {p}" for p in problems))


def stratified_group_split(
    labels: Sequence[str], groups: Sequence[str], fraction: float, seed: int = 0
) -> np.ndarray:
    """Boolean mask of the rows chosen for the held-out part (greedy: ``docs/data.md``).

    Args:
        labels: class of each row.
        groups: patient of each row; a group is never divided.
        fraction: target fraction of every class in the held-out part.
        seed: shuffling seed.
    """
    labels_arr = np.asarray(labels, dtype=object)
    groups_arr = np.asarray(groups, dtype=object)
    chosen = np.zeros(len(labels_arr), dtype=bool)
    if fraction <= 0 or len(labels_arr) == 0:
        return chosen
    classes = sorted(set(labels_arr.tolist()))
    col = {c: j for j, c in enumerate(classes)}
    unique_groups = sorted(set(groups_arr.tolist()))
    gidx = {g: k for k, g in enumerate(unique_groups)}
    counts = np.zeros((len(unique_groups), len(classes)), dtype=np.int64)
    for lab, grp in zip(labels_arr, groups_arr):
        counts[gidx[grp], col[lab]] += 1
    quota = np.floor(fraction * counts.sum(axis=0) + 0.5).astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique_groups))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    taken = np.zeros(len(classes), dtype=np.int64)
    selected: set[str] = set()
    for k in order:
        if np.all(taken + counts[k] <= quota):
            taken += counts[k]
            selected.add(unique_groups[k])
    chosen[:] = [g in selected for g in groups_arr]
    return chosen


def assign_splits(
    table: pd.DataFrame,
    train_centers: str | Sequence[str] = "ABCDEF",
    external_centers: str | Sequence[str] = "GHI",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> pd.DataFrame:
    """A copy of ``table`` with ``split`` set to train / val / external.

    Splits given in every row are kept; if none of them is val, val is carved from the given
    train cases (``carves_val``). Without splits: by center, then val from the training centers.

    Args:
        table: validated manifest (case_id, patient_id, center, label; optional split).
        train_centers: centers used for training (split into train / val).
        external_centers: centers held out as the external test set.
        val_fraction: fraction of every class of the training cases that goes to val.
        seed: seed of the train / val choice.

    Raises:
        SplitError: a center in neither list, a patient in two splits (train + external centers,
            or given splits), or no training cases.
        ConfigError: overlapping center lists or a bad ``val_fraction``.
    """
    out = table.copy()
    given = _given_splits(out)
    if given is not None and given.any() and not given.all():
        raise SplitError(
            "the split column is filled for some cases only; fill it for all or for none"
        )
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction={val_fraction}: expected a value in [0, 1)")
    if given is not None and given.all():
        check_splits(out)
        if not carves_val(out, val_fraction):
            log.info("using the splits given in the manifest")
            return out
        train_rows = np.flatnonzero((out["split"] == "train").to_numpy())
        log.info(
            "the manifest names no val case: carving val from its %d train case(s) "
            "(fraction %g, stratified by class, grouped by patient, seed %d)",
            len(train_rows),
            float(val_fraction),
            int(seed),
        )
        return _carve_val(out, train_rows, val_fraction, seed)
    train_set, ext_set = set(parse_centers(train_centers)), set(parse_centers(external_centers))
    if train_set & ext_set:
        raise ConfigError(
            f"centers {sorted(train_set & ext_set)} are both training and external centers"
        )
    unknown = sorted(set(out["center"]) - train_set - ext_set)
    if unknown:
        cases = {c: ", ".join(out.loc[out["center"] == c, "case_id"].head(5)) for c in unknown}
        lines = "\n".join(f"  - center {c!r} (cases {cases[c]}, ...)" for c in unknown)
        raise SplitError(
            f"centers in neither the training ({''.join(sorted(train_set))}) nor the external "
            f"({''.join(sorted(ext_set))}) list:\n{lines}\n"
            "name them with --train-centers / --external-centers"
        )
    is_train_center = out["center"].isin(train_set).to_numpy()
    out["split"] = np.where(is_train_center, "train", "external")
    check_splits(out)  # a patient seen at a training and an external center
    if not is_train_center.any():
        raise SplitError(
            f"no case comes from a training center ({''.join(sorted(train_set))}); "
            "check the center column or --train-centers"
        )
    return _carve_val(out, np.flatnonzero(is_train_center), val_fraction, seed)


def _given_splits(table: pd.DataFrame) -> pd.Series | None:
    """Which rows have a split in the manifest (None: no split column)."""
    if "split" not in table.columns:
        return None
    return table["split"].fillna("").astype(str).str.len() > 0


def carves_val(table: pd.DataFrame, val_fraction: float) -> bool:
    """Whether ``assign_splits`` carves val out of the train cases a manifest names.

    True when every row has a split, none is ``val``, some are ``train`` and ``val_fraction`` > 0
    (clinical exports often name only train and external cases). A manifest without splits gets
    its val set from the training centers instead, one that names val cases keeps them.
    """
    given = _given_splits(table)
    if given is None or len(table) == 0 or not given.all() or float(val_fraction) <= 0:
        return False
    splits = table["split"].astype(str)
    return bool((splits == "train").any() and not (splits == "val").any())


def _carve_val(
    out: pd.DataFrame, train_rows: np.ndarray, fraction: float, seed: int
) -> pd.DataFrame:
    """Move a stratified, patient-grouped ``fraction`` of ``train_rows`` to val (in place)."""
    sub = out.iloc[train_rows]
    val = stratified_group_split(sub["label"], sub["patient_id"], fraction, seed)
    out.iloc[train_rows[val], out.columns.get_loc("split")] = "val"
    _log_stratification(sub["label"].to_numpy(), val, fraction)
    check_splits(out)
    return out


def _log_stratification(labels: np.ndarray, val: np.ndarray, fraction: float) -> None:
    for cls in CLASSES:
        n = int(np.sum(labels == cls))
        got = int(np.sum(val & (labels == cls)))
        ideal = fraction * n
        if abs(got - ideal) > 1:
            log.warning(
                "val has %d %s cases, ideal %.1f (patients with several cases limit the split)",
                got,
                cls,
                ideal,
            )
    log.info("split: %d train, %d val (of the training cases)", int((~val).sum()), int(val.sum()))
