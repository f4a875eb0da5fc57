"""MLflow entry point `train_classifier` -> `thyroaug train-classifier`."""

from projects._entry import run

if __name__ == "__main__":
    run("train-classifier")
