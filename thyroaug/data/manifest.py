"""Manifest schema, loading (CSV / Parquet / Excel, the authors' registry) and validation.

Columns, aliases, validation rules and the registry layout: ``docs/data.md``, "Manifest".
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from thyroaug.contract import CLASS_NAMES, CLASSES
from thyroaug.data.splits import SPLITS
from thyroaug.errors import ManifestError
from thyroaug.utils.csvsafe import needs_escape

log = logging.getLogger(__name__)

CANONICAL_COLUMNS: tuple[str, ...] = (
    "case_id",
    "patient_id",
    "center",
    "label",
    "image",
    "mask",
    "report",
    "prompt",
    "split",
    "age",
    "sex",
    "manufacturer",
    "model",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("case_id", "center", "label", "image")
PATH_COLUMNS: tuple[str, ...] = ("image_path", "mask_path")

ALIASES: dict[str, tuple[str, ...]] = {
    "case_id": ("caseid", "id", "case", "folder", "imageid", "studyid", "caseno", "casenumber"),
    "patient_id": ("patientid", "patient", "pid", "subjectid", "subject", "mrn"),
    "center": ("center", "centre", "site", "hospital", "institution", "centerid", "centreid"),
    "label": ("label", "class", "class3", "classname", "diagnosis", "category", "target"),
    "image": ("image", "imagepath", "imagefile", "img", "file", "filepath", "path", "filename"),
    "mask": ("mask", "maskpath", "maskfile", "segmentation", "seg", "roi", "labelmap"),
    "report": ("report", "reporttext", "physicianreport", "reports"),
    "prompt": ("prompt", "caption", "text", "prompts"),
    "split": ("split", "subset", "set", "partition"),
    "age": ("age", "ageyears"),
    "sex": ("sex", "gender"),
    "manufacturer": ("manufacturer", "vendor"),
    "model": ("model", "modelname", "scannermodel", "scanner", "system"),
}
"""Canonical column -> accepted names after lower-casing and removing non-alphanumerics."""

_SPLIT_ALIASES: dict[str, str] = {
    **dict.fromkeys(("train", "training"), "train"),
    **dict.fromkeys(("val", "valid", "validation"), "val"),
    **dict.fromkeys(("external", "ext", "test", "testing"), "external"),
}
_SEX_ALIASES: dict[str, str] = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F"}
_SEX_ALIASES["woman"] = "F"
_LABEL_NAMES: dict[str, str] = {v.lower(): k for k, v in CLASS_NAMES.items()}
_LABEL_NAMES.update({k.lower(): k for k in CLASSES})
_IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".dcm", ".nii.gz")
_IMAGE_SUFFIXES += (".nii", ".bmp")


def _key(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_ALIAS_LOOKUP: dict[str, str] = {a: canon for canon, names in ALIASES.items() for a in names}
_ALIAS_LOOKUP.update({_key(c): c for c in CANONICAL_COLUMNS})


def _text(value: Any) -> str:
    """A cell as a clean string: '' for empty/NaN, integral floats without '.0'."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return "" if text.lower() in ("nan", "none", "<na>", "nat") else text


def _where(row: int, case_id: str) -> str:
    return f"row {row + 1} (case {case_id or '<empty id>'})"


def _short_list(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def read_table(path: str | Path, sheet: str | int | None = 0) -> pd.DataFrame:
    """Read a CSV / TSV / Parquet / Excel file as a DataFrame of raw cells (text kept as text).

    Args:
        path: the file.
        sheet: Excel sheet name or index; None concatenates every sheet.

    Raises:
        ManifestError: the file is missing, of an unknown type, or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(str(path), ["manifest file not found"])
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path, dtype=str, keep_default_na=False, sep=None, engine="python")
        if suffix == ".tsv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t")
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".xlsx", ".xlsm", ".xls"):
            frames = pd.read_excel(path, sheet_name=sheet, dtype=str)
            if isinstance(frames, dict):
                return pd.concat(list(frames.values()), ignore_index=True)
            return frames
    except Exception as exc:  # pandas / openpyxl / pyarrow raise many types
        raise ManifestError(str(path), [f"cannot read the file: {exc}"]) from exc
    raise ManifestError(
        str(path), [f"unknown manifest type {suffix!r}; use .csv, .tsv, .parquet or .xlsx"]
    )


def canonicalise_columns(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rename alias columns to canonical names; return (table, problems)."""
    problems: list[str] = []
    mapping: dict[str, str] = {}
    taken: dict[str, str] = {}
    ignored: list[str] = []
    for col in raw.columns:
        canon = _ALIAS_LOOKUP.get(_key(col))
        if canon is None:
            ignored.append(str(col))
            continue
        if canon in taken:
            problems.append(
                f"columns {taken[canon]!r} and {col!r} both mean {canon!r}; keep only one"
            )
            continue
        taken[canon] = str(col)
        mapping[col] = canon
    if ignored:
        log.info("manifest: ignoring unknown column(s) %s", ", ".join(ignored))
    table = raw[list(mapping)].rename(columns=mapping)
    return table, problems


def normalise_label(value: Any, class_map: Mapping[Any, str] | None = None) -> str | None:
    """A label cell as one of ``CLASSES``, or None if it is not recognised."""
    text = _text(value)
    if class_map is not None:
        lookup = {_text(k).lower(): v for k, v in class_map.items()}
        if text.lower() in lookup:
            text = lookup[text.lower()]
    return _LABEL_NAMES.get(re.sub(r"[\s_-]+", " ", text.lower()).strip())


def _resolve(value: str, root: Path) -> Path:
    path = Path(value.replace("\\", "/")).expanduser()
    return path if path.is_absolute() else root / path


def _outside(path: Path, root: Path) -> bool:
    """True if ``path`` (symlinks and ``..`` resolved) does not lie under ``root``."""
    try:
        return not path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop, an unreadable folder
        return True


def _file_columns(raw: pd.DataFrame) -> pd.DataFrame:
    """A file's ``image_path`` / ``mask_path`` as mere aliases of image / mask (never trusted)."""
    names = {c: c.replace("_", " ") for c in PATH_COLUMNS if c in raw.columns}
    return raw.rename(columns=names) if names else raw


def _parse_age(text: str) -> float | None:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*[yY]?", text)
    return float(match.group(1)) if match else None


def validate_manifest(
    table: pd.DataFrame,
    source: str = "<table>",
    root: str | Path | None = None,
    *,
    center: str | None = None,
    class_map: Mapping[Any, str] | None = None,
    check_files: bool = True,
    allow_outside_root: bool = False,
) -> pd.DataFrame:
    """Canonicalise and validate a manifest table; return the clean canonical table.

    Args:
        table: raw or canonical table (aliases accepted).
        source: name used in error messages (usually the file path).
        root: folder relative paths are resolved against (default: the current directory).
        center: fills ``center`` where it is missing or empty.
        class_map: meaning of label values that are not class codes / names, e.g.
            ``{0: "DG", 1: "NG", 2: "NL", 3: "TI"}``.
        check_files: check that every image / mask file exists.
        allow_outside_root: accept image / mask paths outside ``root`` (absolute paths elsewhere,
            ``..``); refused by default.

    Returns:
        The canonical table plus ``image_path`` / ``mask_path`` (absolute paths, ``""`` if none).

    Raises:
        ManifestError: with every problem found, one line each.
    """
    root_path = Path(root) if root is not None else Path.cwd()
    had_paths = all(c in table.columns for c in PATH_COLUMNS)
    df, problems = canonicalise_columns(table.drop(columns=list(PATH_COLUMNS), errors="ignore"))
    if center is not None:
        if "center" not in df.columns:
            df["center"] = center
        else:
            df["center"] = [_text(v) or center for v in df["center"]]
    for col in REQUIRED_COLUMNS:
        if col not in df.columns:
            names = ", ".join(ALIASES[col][:4])
            problems.append(f"required column {col!r} is missing (also accepted: {names}, ...)")
    if len(df) == 0:
        problems.append("the manifest has no rows")
    missing_required = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing_required:
        raise ManifestError(source, problems)

    out = pd.DataFrame(index=range(len(df)))
    for col in CANONICAL_COLUMNS:
        if col == "age":
            continue
        out[col] = [_text(v) for v in df[col]] if col in df.columns else ""
    if "patient_id" not in df.columns:
        log.info("%s: no patient column; each case is its own patient", source)
    out["patient_id"] = [p or c for p, c in zip(out["patient_id"], out["case_id"])]

    ages = [_check_row(out, df, i, class_map, problems) for i in range(len(out))]
    out["age"] = pd.Series(ages, dtype="float64")
    for col in ("image", "mask"):
        given = [_text(v) for v in table[f"{col}_path"]] if had_paths else [""] * len(out)
        out[f"{col}_path"] = [
            _row_path(out, i, col, given[i], root_path, problems, check_files, allow_outside_root)
            for i in range(len(out))
        ]
    out = out[[*CANONICAL_COLUMNS, *PATH_COLUMNS]]
    problems.extend(_table_problems(out))
    if problems:
        raise ManifestError(source, problems)
    return out


def _check_row(
    out: pd.DataFrame,
    df: pd.DataFrame,
    i: int,
    class_map: Mapping[Any, str] | None,
    problems: list[str],
) -> float:
    """Check and normalise row ``i`` of ``out`` in place (problems appended); return its age."""
    cid = out.at[i, "case_id"]
    where = _where(i, cid)
    if not cid:
        problems.append(f"{where}: empty case_id")
    for col in ("case_id", "center"):
        if col in df.columns and (needs_escape(df[col].iloc[i]) or needs_escape(out.at[i, col])):
            problems.append(
                f"{where}: {col} {_text(df[col].iloc[i])!r} starts with a character a "
                "spreadsheet runs as a formula (= + - @, tab, CR); rename it"
            )
    if not out.at[i, "center"]:
        problems.append(f"{where}: empty center")
    raw_label = df["label"].iloc[i]
    label = normalise_label(raw_label, class_map)
    if label is None:
        text = _text(raw_label)
        hint = (
            " (numeric labels need a class map, e.g. --class-map 0=DG,1=NG,2=NL,3=TI)"
            if re.fullmatch(r"\d+", text) and class_map is None
            else ""
        )
        problems.append(
            f"{where}: unknown label {text!r}; expected one of {', '.join(CLASSES)}{hint}"
        )
    else:
        out.at[i, "label"] = label
    split = out.at[i, "split"]
    if split:
        canon_split = _SPLIT_ALIASES.get(split.lower())
        if canon_split is None:
            problems.append(f"{where}: bad split {split!r}; expected one of {', '.join(SPLITS)}")
        else:
            out.at[i, "split"] = canon_split
    sex = out.at[i, "sex"]
    if sex:
        out.at[i, "sex"] = _SEX_ALIASES.get(sex.lower(), sex)
    age_text = _text(df["age"].iloc[i]) if "age" in df.columns else ""
    age = _parse_age(age_text) if age_text else float("nan")
    if age is None:
        problems.append(f"{where}: age {age_text!r} is not a number")
        age = float("nan")
    return age


def _row_path(
    out: pd.DataFrame, i: int, col: str, given: str, root: Path, problems: list[str],
    check_files: bool, allow_outside_root: bool,
) -> str:  # fmt: skip
    """The absolute ``image`` / ``mask`` path of row ``i`` ('' if none; problems appended).

    ``given``: the row's ``image_path`` / ``mask_path`` of an already validated table (trusted).
    """
    where = _where(i, out.at[i, "case_id"])
    value = out.at[i, col]
    if given:
        resolved = Path(given)
    elif value:
        resolved = _resolve(value, root)
        if not allow_outside_root and _outside(resolved, root):
            problems.append(
                f"{where}: {col} path {value!r} points outside the manifest's folder {root}; "
                "move the file under it, or allow it explicitly (allow_outside_root=True, "
                "`thyroaug prepare --allow-outside-root`)"
            )
            return str(resolved.absolute())
    else:
        if col == "image":
            problems.append(f"{where}: empty image path")
        return ""
    if check_files and not resolved.is_file():
        problems.append(f"{where}: {col} file not found: {resolved}")
    return str(resolved.absolute())


def _table_problems(out: pd.DataFrame) -> list[str]:
    """Problems spanning rows: duplicate case ids, splits given on some rows only, patients."""
    problems = []
    ids = out["case_id"]
    for cid, rows in ids[ids != ""].groupby(ids).groups.items():
        if len(rows) > 1:
            problems.append(
                f"duplicate case_id {cid!r} in rows {', '.join(str(r + 1) for r in rows)}"
            )
    splits = out["split"]
    given = splits != ""
    if given.any() and not given.all():
        rows = [_where(i, out.at[i, "case_id"]) for i in range(len(out)) if not given.iloc[i]]
        problems.append(
            f"split is empty in {len(rows)} row(s) while others have one ({_short_list(rows)}); "
            "fill every row or leave the column empty to have splits assigned"
        )
    problems.extend(patient_split_conflicts(out))
    return problems


def patient_split_conflicts(table: pd.DataFrame) -> list[str]:
    """One message per patient whose cases lie in more than one split (empty splits ignored)."""
    messages: list[str] = []
    sub = table[table["split"].isin(SPLITS)]
    for pid, group in sub.groupby("patient_id", sort=True):
        if group["split"].nunique() > 1:
            parts = [f"{c} ({s})" for c, s in zip(group["case_id"], group["split"])]
            messages.append(
                f"patient {pid} is in splits {', '.join(sorted(set(group['split'])))}: "
                f"cases {', '.join(parts)}; a patient's cases must share one split"
            )
    return messages


def load_manifest(
    path: str | Path,
    root: str | Path | None = None,
    *,
    center: str | None = None,
    class_map: Mapping[Any, str] | None = None,
    sheet: str | int | None = 0,
    check_files: bool = True,
    allow_outside_root: bool = False,
) -> pd.DataFrame:
    """Load and validate a manifest file (CSV / TSV / Parquet / Excel).

    Args:
        path: the manifest file.
        root: folder relative paths are resolved against (default: the manifest's folder).
        sheet: Excel sheet (name or index; None = all sheets concatenated).
        center, class_map, check_files, allow_outside_root: as in ``validate_manifest``.

    Returns:
        The validated canonical table (see ``validate_manifest``).

    Raises:
        ManifestError: listing every problem found.
    """
    path = Path(path)
    return validate_manifest(
        _file_columns(read_table(path, sheet=sheet)),
        source=str(path),
        root=Path(root) if root is not None else path.parent,
        center=center,
        class_map=class_map,
        check_files=check_files,
        allow_outside_root=allow_outside_root,
    )


def _find_workbook(folder_or_xlsx: Path) -> Path:
    if folder_or_xlsx.is_file():
        return folder_or_xlsx
    if not folder_or_xlsx.is_dir():
        raise ManifestError(str(folder_or_xlsx), ["registry folder or workbook not found"])
    candidates: list[Path] = []
    for folder in (folder_or_xlsx, folder_or_xlsx / "Data"):
        candidates += sorted(p for p in folder.glob("*.xls*") if not p.name.startswith("~$"))
        if candidates:
            break
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise ManifestError(
            str(folder_or_xlsx),
            [f"expected one Excel workbook here or in Data/ (found {found}); pass the file"],
        )
    return candidates[0]


def _guess_file(folder: Path, case_id: str, suffix: str | None) -> str:
    name = folder.name
    if suffix is not None:
        return f"{name}/{case_id}{suffix}"
    for suf in _IMAGE_SUFFIXES:
        if (folder / f"{case_id}{suf}").is_file():
            return f"{name}/{case_id}{suf}"
    return f"{name}/{case_id}.jpg"


def load_registry(
    folder_or_xlsx: str | Path,
    center: str,
    *,
    sheet: str | int | None = None,
    images_dir: str = "IMAGES",
    masks_dir: str = "MASKS",
    suffix: str | None = None,
    class_map: Mapping[Any, str] | None = None,
    check_files: bool = True,
    allow_outside_root: bool = False,
) -> pd.DataFrame:
    """Load the authors' registry layout: an Excel sheet + ``IMAGES/<ID>.jpg`` + ``MASKS/<ID>.jpg``.

    Every row gets ``center`` and patient_id = case id unless the workbook has such columns
    (``docs/data.md``, "The authors' registry").

    Args:
        folder_or_xlsx: the workbook, or a folder holding exactly one (directly or in ``Data/``).
        center: center of every row (e.g. ``"A"``).
        sheet: sheet name or index; None reads every sheet that has an id and a class column.
        images_dir: name of the image folder.
        masks_dir: name of the mask folder.
        suffix: file suffix (e.g. ``".jpg"``); None picks the first existing of the usual ones.
        class_map: meaning of numeric class values, e.g. ``{0: "DG", 1: "NG", 2: "NL", 3: "TI"}``.
        check_files: check that every referenced file exists.
        allow_outside_root: accept paths outside the folder holding ``IMAGES`` (default: refused).

    Returns:
        The validated canonical table, paths relative to the folder holding ``IMAGES``.

    Raises:
        ManifestError: listing every problem found.
    """
    xlsx = _find_workbook(Path(folder_or_xlsx))
    base = next((d for d in (xlsx.parent, xlsx.parent.parent) if (d / images_dir).is_dir()), None)
    if base is None:
        raise ManifestError(
            str(xlsx), [f"no {images_dir}/ folder next to the workbook or next to its folder"]
        )
    if sheet is None:
        try:
            sheets = pd.read_excel(xlsx, sheet_name=None, dtype=str)
        except Exception as exc:
            raise ManifestError(str(xlsx), [f"cannot read the workbook: {exc}"]) from exc
        frames = []
        for name, frame in sheets.items():
            canon = {_ALIAS_LOOKUP.get(_key(c)) for c in frame.columns}
            if {"case_id", "label"} <= canon:
                frames.append(frame)
            else:
                log.info("%s: sheet %r has no ID / Class columns; skipped", xlsx, name)
        if not frames:
            raise ManifestError(str(xlsx), ["no sheet has an ID (or Folder) and a Class column"])
        raw = pd.concat(frames, ignore_index=True)
    else:
        raw = read_table(xlsx, sheet=sheet)
    df, problems = canonicalise_columns(_file_columns(raw))
    if problems:
        raise ManifestError(str(xlsx), problems)
    if "case_id" not in df.columns:
        raise ManifestError(str(xlsx), ["no ID (or Folder) column"])
    ids = [_text(v) for v in df["case_id"]]
    images = base / images_dir
    masks = base / masks_dir
    if "image" not in df.columns:
        df["image"] = [_guess_file(images, cid, suffix) if cid else "" for cid in ids]
    if "mask" not in df.columns:
        if masks.is_dir():
            df["mask"] = [_guess_file(masks, cid, suffix) if cid else "" for cid in ids]
        else:
            log.info("%s: no %s/ folder; cases have no masks", xlsx, masks_dir)
    return validate_manifest(
        df,
        source=str(xlsx),
        root=base,
        center=center,
        class_map=class_map,
        check_files=check_files,
        allow_outside_root=allow_outside_root,
    )


def combine_manifests(tables: Iterable[pd.DataFrame], source: str = "<manifests>") -> pd.DataFrame:
    """Concatenate validated tables and re-check what spans them (duplicate ids, patient splits)."""
    frames = list(tables)
    if len(frames) == 1:
        return frames[0]
    both = pd.concat(frames, ignore_index=True)
    return validate_manifest(both, source=source, check_files=False)


def parse_class_map(text: str | None) -> dict[str, str] | None:
    """Parse ``"0=DG,1=NG,2=NL,3=TI"`` into a class map (None for empty input)."""
    if not text:
        return None
    result: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        label = normalise_label(value)
        if not sep or not key.strip() or label is None:
            raise ManifestError(
                "--class-map", [f"bad entry {part!r}; expected VALUE=CLASS with CLASS in {CLASSES}"]
            )
        result[key.strip()] = label
    return result
