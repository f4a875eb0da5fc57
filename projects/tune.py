"""MLflow entry point `tune` -> `thyroaug tune`."""

from projects._entry import run

if __name__ == "__main__":
    run("tune")
