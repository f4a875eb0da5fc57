"""Thin MLflow Project entry points: each turns MLproject parameters into a `thyroaug` command."""
