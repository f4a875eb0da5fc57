"""thyroaug: generative augmentation and classification of thyroid scintigraphy (MLflow)."""

from thyroaug.contract import CLASS_NAMES, CLASSES

__version__ = "0.1.0"

__all__ = ["CLASSES", "CLASS_NAMES", "__version__"]
