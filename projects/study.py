"""MLflow entry point `study` -> `thyroaug study`."""

from projects._entry import run

if __name__ == "__main__":
    run("study")
