"""MLflow entry point `train_sd` -> `thyroaug train-sd`."""

from projects._entry import run

if __name__ == "__main__":
    run("train-sd")
