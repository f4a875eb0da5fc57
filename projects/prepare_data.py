"""MLflow entry point `prepare_data` -> `thyroaug prepare`."""

from projects._entry import run

if __name__ == "__main__":
    run("prepare")
