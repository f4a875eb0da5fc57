"""thyroaug: generative augmentation and classification of thyroid scintigraphy (MLflow)."""

__version__ = "0.1.0"

CLASSES: tuple[str, ...] = ("DG", "NG", "NL", "TI")
"""Class names in index order: diffuse goiter, nodular goiter, normal, thyroiditis."""

CLASS_NAMES: dict[str, str] = {
    "DG": "diffuse goiter",
    "NG": "nodular goiter",
    "NL": "normal",
    "TI": "thyroiditis",
}
