"""Dataclass configs with named profiles.

Every component config is a dataclass whose field defaults are the paper's values (the ``paper``
profile). A class attribute ``PROFILES`` maps the other profile names (``quick`` for CPU demos,
``smoke`` for tests) to the few fields they override. ``resolve`` builds a config from a profile
plus explicit overrides and validates field names, so a typo is an error, not a silent default.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Demo:
    ...     epochs: int = 300
    ...     PROFILES = {"quick": {"epochs": 5}, "smoke": {"epochs": 1}}
    >>> resolve(Demo, "smoke").epochs
    1
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

from thyroaug.errors import ConfigError

PROFILE_NAMES: tuple[str, ...] = ("paper", "quick", "smoke")
T = TypeVar("T")


def check_profile(profile: str) -> str:
    """Return ``profile`` if it is a known profile name, else raise ConfigError."""
    if profile not in PROFILE_NAMES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_NAMES)}")
    return profile


def _coerce(value: Any, default: Any, name: str) -> Any:
    """Coerce string overrides (from CLI / MLproject) to the type of the field's default."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, (tuple, list)):
            parsed = json.loads(value) if value.strip().startswith("[") else value.split(",")
            return type(default)(type(default[0])(v) if default else v for v in parsed)
    except ValueError as exc:
        raise ConfigError(f"{name}={value!r}: expected {type(default).__name__}") from exc
    return value


def resolve(cls: type[T], profile: str = "paper", **overrides: Any) -> T:
    """Build ``cls`` from the named profile, then apply ``overrides`` (None values are ignored).

    Raises:
        ConfigError: unknown profile or unknown field name, or an override of the wrong type.
    """
    check_profile(profile)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if profile != "paper":
        values.update(getattr(cls, "PROFILES", {}).get(profile, {}))
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in fields)
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(fields))}"
        )
    for key, value in overrides.items():
        if value is None:
            continue
        field = fields[key]
        default = field.default if field.default is not dataclasses.MISSING else None
        if default is None and field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        values[key] = _coerce(value, default, f"{cls.__name__}.{key}")
    cfg = cls(**values)
    if hasattr(cfg, "profile"):
        object.__setattr__(cfg, "profile", profile)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as a flat JSON-able dict (tuples become lists, paths strings)."""

    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in dataclasses.asdict(cfg).items()}


def local_weights(env_var: str, default_name: str | None = None) -> Path | None:
    """Path of an optional local pretrained-weights file / directory, or None.

    Looked up in the environment variable ``env_var``, then ``$THYROAUG_WEIGHTS_DIR/default_name``.
    Nothing is ever downloaded: a missing file means "train from random initialisation".
    """
    value = os.environ.get(env_var)
    if value:
        path = Path(value).expanduser()
        if not path.exists():
            raise ConfigError(f"{env_var}={value} does not exist; unset it to run without it")
        return path
    base = os.environ.get("THYROAUG_WEIGHTS_DIR")
    if base and default_name:
        path = Path(base).expanduser() / default_name
        if path.exists():
            return path
    return None
