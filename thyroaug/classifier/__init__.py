"""The paper's ResNet18 classifier: config, model, in-memory training loop, external evaluation."""

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.model import build_resnet18
from thyroaug.classifier.train import fit, predict_proba

__all__ = ["ClassifierConfig", "build_resnet18", "fit", "predict_proba"]
