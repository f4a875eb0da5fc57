"""thyroaug: generative augmentation and classification of thyroid scintigraphy (MLflow)."""

import os

# OpenMP threads that spin while waiting collapse when two processes share the cores (a study's
# parallel steps, mlflow, a browser): measured on 2 cores, ResNet18 training fell from ~55 to ~8
# img/s with 2 spinning threads next to another busy process, and ran at ~80-100 img/s with passive
# waiting. Set before torch is imported; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from thyroaug.contract import CLASS_NAMES, CLASSES

__version__ = "0.1.0"

__all__ = ["CLASSES", "CLASS_NAMES", "__version__"]
