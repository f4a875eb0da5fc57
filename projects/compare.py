"""MLflow entry point `compare` -> `thyroaug compare`."""

from projects._entry import run

if __name__ == "__main__":
    run("compare")
