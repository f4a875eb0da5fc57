"""Exception families. Messages say what is wrong, where (case id / file), and what to do."""


class ThyroaugError(Exception):
    """Base class of every error this package raises on purpose."""


class ManifestError(ThyroaugError):
    """A manifest (CSV / Parquet / Excel) is unreadable or has invalid rows.

    ``problems`` holds every problem found, one line each, so a user fixes them all at once.
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) found:\n{lines}")


class ImageReadError(ThyroaugError):
    """An image or mask file is missing, unreadable, not planar, or has invalid pixels."""


class CohortFileError(ThyroaugError):
    """A prepared cohort file is missing, truncated, corrupt or inconsistent (re-prepare it)."""


class SplitError(ThyroaugError):
    """Splits are inconsistent (e.g. a patient in two splits, an empty split)."""


class ConfigError(ThyroaugError):
    """A configuration / profile / parameter value is invalid."""


class ScenarioError(ThyroaugError):
    """A scenario string is invalid or its inputs (synthetic sets) are missing."""


class PromptError(ThyroaugError):
    """A prompt cannot be built or exceeds the text encoder's token limit."""


class GeneratorError(ThyroaugError):
    """A generator request is invalid (unknown label, wrong mask size, count over the cap...)."""


class TrackingError(ThyroaugError):
    """The tracking server or store is unreachable or misconfigured."""


class StorageError(ThyroaugError):
    """A write failed for lack of space or quota, for lack of permission, or on a read-only file
    system: the message names the file system or folder, the file, and how to go on."""
