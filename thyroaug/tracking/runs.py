"""Run helpers every job shares: safe param logging, descriptions, dataset inputs, read-backs."""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

from thyroaug.contract import TAG_MLFLOW_NOTE

BEST_PARAMS_ARTIFACT = "tune/best_params.json"
"""Where `thyroaug tune` logs the best hyperparameters (read by ``--params-from``)."""


def load_best_params(source: str) -> dict[str, Any]:
    """Best params from a JSON file or a tune run id (its ``tune/best_params.json``)."""
    path = Path(source)
    if not path.exists():
        path = Path(
            mlflow.artifacts.download_artifacts(run_id=source, artifact_path=BEST_PARAMS_ARTIFACT)
        )
    data = json.loads(path.read_text())
    return dict(data.get("params", data))


def tag_clause(name: str, value: str) -> str:
    """``tags.<name> = '<value>'`` for an MLflow search filter (dotted names in backticks).

    Raises:
        ValueError: the value holds a quote or backslash (MLflow's filter has no escape for them).
    """
    if "'" in value or "\\" in value:
        raise ValueError(f"tag value {value!r}: quotes and backslashes cannot be searched for")
    key = f"`{name}`" if "." in name else name
    return f"tags.{key} = '{value}'"


def log_params_safely(params: Mapping[str, Any], changed_tag: str | None = None) -> None:
    """``mlflow.log_params`` that survives params the run already has.

    An entry point's ``-P`` values are logged by `mlflow run` before our code runs (e.g.
    ``mode=auto`` meaning "the generator's default"); MLflow forbids changing a param, so a resolved
    value that differs is logged as ``<key>_resolved`` instead, and an equal one is skipped. With
    ``changed_tag`` (a resumed run), differing values go into that tag as JSON instead.
    """

    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    out: dict[str, str] = {}
    changed: dict[str, str] = {}
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        text = text[:6000]
        if key in existing and existing[key] != text:
            if changed_tag:
                changed[key] = text
                continue
            key = f"{key}_resolved"
        if key not in existing:
            out[key] = text
    if out:
        mlflow.log_params(out)
    if changed and changed_tag:
        mlflow.set_tag(changed_tag, json.dumps(changed))


def log_missing_steps(run_id: str, history: Mapping[str, Sequence[float]]) -> list[str]:
    """Log the steps (1-based) of each metric history the run lacks: an outage or a kill between
    a checkpoint and its logging skipped them. Returns ``name@step`` of what was logged now."""

    client = MlflowClient()
    now = int(time.time() * 1000)
    metrics = []
    for name, values in history.items():
        have = {m.step for m in client.get_metric_history(run_id, name)}
        metrics += [
            Metric(name, float(values[s - 1]), now, s)
            for s in range(1, len(values) + 1)
            if s not in have
        ]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    return [f"{m.key}@{m.step}" for m in metrics]


def describe_run(text: str) -> None:
    """The run's description in the MLflow UI (``mlflow.note.content``): what it did, headlines."""

    mlflow.set_tag(TAG_MLFLOW_NOTE, text.strip())


def log_cohort_input(cohort: Any, source: str | Path, context: str = "training") -> None:
    """Log a prepared cohort as a dataset input of the active run (digest = its content hash).

    Only the table's schema and size reach MLflow (never report text); ``source`` is the cache
    file.
    """

    table = cohort.table.drop(columns=["report", "prompt", "patient_id"], errors="ignore")
    with warnings.catch_warnings():  # ambiguous local source / integer-column schema hints
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            table,
            source=str(Path(source).resolve()),
            name=f"thyroaug-cohort-{cohort.size}px",
            digest=cohort.content_hash,
            targets="label",
        )
        mlflow.log_input(dataset, context=context)


def log_synthetic_input(
    data: Any, ref: str, method: str, sha256: str = "", local_path: str | None = None
) -> None:
    """Log a consumed synthetic set as a dataset input (context ``synthetic-<METHOD>``).

    The source is the set's local folder (MLflow resolves no ``runs:/`` dataset sources); the
    reference the user gave is in the run's params. Never fails the run: a set MLflow cannot
    describe is skipped with a warning.
    """

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                data.manifest[["index", "label", "method", "seed"]],
                source=str(Path(local_path).resolve()) if local_path else None,
                name=f"thyroaug-synthetic-{method}",
                digest=(sha256 or "")[:32] or None,
                targets="label",
            )
            mlflow.log_input(dataset, context=f"synthetic-{method}")
    except Exception as exc:  # a dataset input is a convenience for browsing, never essential
        logging.getLogger(__name__).warning(
            "synthetic set %s (%s) not logged as a dataset input: %s", method, ref, exc
        )


class BufferedMetrics:
    """Per-epoch metric logging that survives a tracking outage.

    A failed ``log_metrics`` call is kept in memory (the user sees one warning line, training
    goes on); every later call first retries what is buffered, and ``flush`` at the end of
    training tries once more and, if the server is still away, writes the buffer as JSON beside
    the run's outputs (``fallback``) so nothing is lost.
    """

    def __init__(self, fallback: Path | None = None) -> None:
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.fallback = fallback
        self._warned = False

    def _send(self) -> None:

        while self.pending:
            step, metrics = self.pending[0]
            mlflow.log_metrics(metrics, step=step)
            self.pending.pop(0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log (or buffer) ``metrics`` at ``step``."""

        self.pending.append((step, dict(metrics)))
        try:
            self._send()
        except Exception as exc:  # the tracking server is away: keep training
            if not self._warned:
                logging.getLogger(__name__).warning(
                    "tracking server unreachable (%s); metrics are buffered and sent when it "
                    "answers again",
                    type(exc).__name__,
                )
                self._warned = True

    def flush(self) -> bool:
        """Send what is buffered; on failure write it to ``fallback``. True if all was sent."""
        try:
            self._send()
            return True
        except Exception:
            if self.fallback is not None:
                self.fallback.parent.mkdir(parents=True, exist_ok=True)
                self.fallback.write_text(json.dumps(self.pending))
            return False
