"""MLflow entry point `train_fm` -> `thyroaug train-fm`."""

from projects._entry import run

if __name__ == "__main__":
    run("train-fm")
