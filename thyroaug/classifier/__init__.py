"""The paper's ResNet18 classifier: model, in-memory training loop, the train_classifier job."""

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.job import prepare_scenario_data, train_and_evaluate
from thyroaug.classifier.model import build_resnet18
from thyroaug.classifier.train import fit, predict_proba

__all__ = [
    "ClassifierConfig",
    "build_resnet18",
    "fit",
    "predict_proba",
    "prepare_scenario_data",
    "train_and_evaluate",
]
