"""MLflow entry point `synthesize` -> `thyroaug synthesize`."""

from projects._entry import run

if __name__ == "__main__":
    run("synthesize")
