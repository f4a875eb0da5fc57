"""`thyroaug study`: the whole study as one parent MLflow run with a child run per step.

Steps, in order (each is an ordinary `thyroaug <command>` run in this process, so it logs exactly
what it logs when run alone):

  prepare_data -> train_fm / train_sd (only if a scenario needs them) -> synthesize (per method)
  -> train_classifier (one per scenario) -> compare

Restarts: every step has a config hash (its command line + the hashes of the steps it consumes).
A step whose FINISHED run with the same study id and hash exists is skipped and its outputs are
read back from that run, so a killed study restarts where it stopped. The parent run is found again
by its study id. ``--scenarios`` picks a subset (``default``: the five quick scenarios; ``all``: the
paper's 18; or a comma-separated list). ``--backend kubernetes`` dispatches the independent
classifier runs to MLflow's Kubernetes backend (docker/kubernetes_job_template.yaml) instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thyroaug.contract import EXPERIMENT, synthetic_artifact
from thyroaug.errors import ThyroaugError
from thyroaug.generators import registry
from thyroaug.tracking.setup import RUN_TAGS_ENV, configure_tracking, project_home

log = logging.getLogger(__name__)

DEFAULT_SCENARIOS: tuple[str, ...] = ("O", "CA", "FM", "O+FM", "O+FM+CA")
PER_CLASS = {"paper": 1000, "quick": 100, "smoke": 8}


def parse_scenarios(text: str) -> list[str]:
    """``default`` / ``all`` / a comma-separated list -> canonical scenario names, de-duplicated."""
    from thyroaug.scenarios import PAPER_SCENARIOS, canonical

    if text in ("", "default"):
        names = list(DEFAULT_SCENARIOS)
    elif text == "all":
        names = list(PAPER_SCENARIOS)
    else:
        names = [s.strip() for s in text.split(",") if s.strip()]
    out: list[str] = []
    for name in names:
        c = canonical(name)
        if c not in out:
            out.append(c)
    return out


def methods_needed(scenarios: list[str]) -> list[str]:
    """Generator methods (SD1..SD4, FM, plug-ins) the scenarios consume, in registry order."""
    from thyroaug.scenarios import Scenario

    parts = {p for s in scenarios for p in Scenario.parse(s).generator_methods}
    return [m for m in registry.generator_methods() if m in parts]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Study:
    """State of one study execution: the parent run and the steps done so far."""

    study_id: str
    profile: str
    client: Any
    experiment_id: str
    parent_id: str = ""
    done: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def find_step(self, key: str, config_hash: str) -> Any | None:
        """The latest FINISHED run of this step with this config hash, or None."""
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.study_id = '{self.study_id}' and tags.study_step = '{key}' and "
            f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'",
            max_results=1,
            order_by=["attributes.end_time DESC"],
        )
        return runs[0] if runs else None

    def step(self, key: str, argv: list[str], depends: list[str] | None = None) -> tuple[Any, str]:
        """Run ``thyroaug <argv>`` as a child run unless an identical finished one exists.

        Returns (the step's mlflow Run, its config hash).
        """
        from thyroaug.jobs.commands import main

        config_hash = _hash({"argv": argv, "depends": depends or [], "profile": self.profile})
        found = self.find_step(key, config_hash)
        if found is not None:
            log.info(
                "study %s: step %s already finished (run %s), reused",
                self.study_id,
                key,
                found.info.run_id,
            )
            self.reused.append(key)
            return found, config_hash
        log.info("study %s: step %s -> thyroaug %s", self.study_id, key, " ".join(argv))
        tags = {"study_id": self.study_id, "study_step": key, "config_hash": config_hash}
        previous = os.environ.get(RUN_TAGS_ENV)
        os.environ[RUN_TAGS_ENV] = json.dumps(tags)
        try:
            code = main(argv)
        finally:
            if previous is None:
                os.environ.pop(RUN_TAGS_ENV, None)
            else:
                os.environ[RUN_TAGS_ENV] = previous
        if code != 0:
            raise ThyroaugError(f"study step {key} failed (exit {code}); rerun the study to resume")
        found = self.find_step(key, config_hash)
        if found is None:
            raise ThyroaugError(
                f"study step {key} finished but left no FINISHED run tagged "
                f"config_hash={config_hash}"
            )
        self.done.append(key)
        return found, config_hash


def _registered_uri(client: Any, name: str, run_id: str) -> str:
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        raise ThyroaugError(f"run {run_id} registered no version of {name}")
    return f"models:/{name}/{max(int(v.version) for v in versions)}"


def run_study(
    profile: str = "quick",
    scenarios: str = "default",
    study_id: str | None = None,
    phantom_scale: float | None = None,
    manifest: str | None = None,
    seed: int = 0,
    backend: str = "local",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the study; returns {study_id, parent_run_id, report, steps_run, reused}."""
    import mlflow
    from mlflow import MlflowClient

    from thyroaug.scenarios import Scenario

    names = parse_scenarios(scenarios)
    scale = (
        phantom_scale
        if phantom_scale is not None
        else {"paper": 1.0, "quick": 0.25, "smoke": 0.03}[profile]
    )
    study_id = study_id or f"{profile}-s{seed}"
    uri = configure_tracking()
    client = MlflowClient()
    exp = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT)
    st = Study(study_id, profile, client, exp.experiment_id)
    parents = client.search_runs(
        [exp.experiment_id],
        f"tags.study_id = '{study_id}' and tags.step = 'study'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if parents:
        st.parent_id = parents[0].info.run_id
        client.update_run(st.parent_id, status="RUNNING")
        echo(f"resuming study {study_id} (parent run {st.parent_id})")
    else:
        parent = client.create_run(
            exp.experiment_id,
            run_name=f"study-{study_id}",
            tags={"step": "study", "study_id": study_id, "profile": profile},
        )
        st.parent_id = parent.info.run_id
        client.log_param(st.parent_id, "profile", profile)
        client.log_param(st.parent_id, "scenarios", ",".join(names))
        client.log_param(st.parent_id, "seed", seed)
    os.environ["MLFLOW_PARENT_RUN_ID"] = st.parent_id
    home = project_home()
    out = home / "outputs" / study_id
    t0 = time.monotonic()
    status = "FAILED"
    try:
        cohort_dir = out / "cohort"
        if manifest:
            prep_argv = ["prepare", "--manifest", manifest, "--out", str(cohort_dir)]
        else:
            prep_argv = [
                "prepare",
                "--phantom-scale",
                str(scale),
                "--phantom-dir",
                str(out / "phantom"),
                "--out",
                str(cohort_dir),
            ]
        prep_argv += ["--seed", str(seed)]
        # A manifest's bytes enter the hash so that an edited manifest is prepared again; the
        # cohort's content hash (logged by prepare) is what downstream steps depend on.
        manifest_hash = _hash(Path(manifest).read_bytes().hex()) if manifest else ""
        prep_run, _ = st.step("prepare_data", prep_argv, [manifest_hash])
        prep_hash = prep_run.data.tags.get("cohort.content_hash") or prep_run.info.run_id
        echo(f"[study] cohort ready ({time.monotonic() - t0:.0f} s)")

        def classifier(scenario: str, synthetic: dict[str, str], hashes: dict[str, str]) -> Any:
            needed = list(Scenario.parse(scenario).generator_methods)
            argv = [
                "train-classifier",
                "--scenario",
                scenario,
                "--profile",
                profile,
                "--cohort",
                str(cohort_dir),
                "--seed",
                str(seed),
                "--study-id",
                study_id,
            ]
            for m in needed:
                argv += ["--synthetic", f"{m}={synthetic[m]}"]
            if backend == "kubernetes":
                _dispatch_kubernetes(scenario, profile, study_id, synthetic, needed, seed)
                return None
            run, _ = st.step(
                f"classifier_{scenario}", argv, [prep_hash, *(hashes[m] for m in needed)]
            )
            echo(f"[study] {scenario} done ({time.monotonic() - t0:.0f} s)")
            return run

        synthetic: dict[str, str] = {}
        method_hash: dict[str, str] = {}
        methods = methods_needed(names)
        # The O classifier comes first when the study has it: its penultimate layer is the domain
        # feature extractor of the synthesis steps' FID/KID (paper Table 3 analogue).
        feature_args: list[str] = []
        if "O" in names and backend == "local":
            o_run = classifier("O", synthetic, method_hash)
            feature_args = ["--feature-model", f"runs:/{o_run.info.run_id}/model"]
        # One generator per family: train + register once, then one synthesize step per method.
        for fam in registry.families():
            family_methods = [m for m in fam.methods if m in methods]
            if not family_methods:
                continue
            gen_run, gen_hash = st.step(
                fam.entry_point,
                [
                    fam.train_command,
                    "--profile",
                    profile,
                    "--cohort",
                    str(cohort_dir),
                    "--seed",
                    str(seed),
                    "--register",
                ],
                [prep_hash],
            )
            model_uri = _registered_uri(client, fam.registered_name, gen_run.info.run_id)
            for method in family_methods:
                mode = fam.mode_args(method)
                syn_run, method_hash[method] = st.step(
                    f"synthesize_{method}",
                    [
                        "synthesize",
                        "--generator",
                        model_uri,
                        *mode,
                        "--per-class",
                        str(PER_CLASS[profile]),
                        "--cohort",
                        str(cohort_dir),
                        "--seed",
                        str(seed),
                        *feature_args,
                    ],
                    [gen_hash],
                )
                synthetic[method] = f"runs:/{syn_run.info.run_id}/{synthetic_artifact(method)}"
            echo(f"[study] {fam.name.upper()} trained and sampled ({time.monotonic() - t0:.0f} s)")

        for scenario in names:
            if scenario == "O" and feature_args:
                continue  # already trained above
            classifier(scenario, synthetic, method_hash)

        from thyroaug.jobs.compare import compare_study

        os.environ[RUN_TAGS_ENV] = json.dumps({"study_step": "compare"})
        try:
            result = compare_study(study_id, exp.name, expected=names)
        finally:
            os.environ.pop(RUN_TAGS_ENV, None)
        status = "FINISHED"
    finally:
        os.environ.pop("MLFLOW_PARENT_RUN_ID", None)
        client.log_metric(st.parent_id, "study_seconds", time.monotonic() - t0)
        client.set_terminated(st.parent_id, status=status)
    return {
        "study_id": study_id,
        "parent_run_id": st.parent_id,
        "report": result["report"],
        "compare_run_id": result["run_id"],
        "missing": result["missing"],
        "steps_run": st.done,
        "reused": st.reused,
        "tracking_uri": uri,
    }


def _dispatch_kubernetes(
    scenario: str,
    profile: str,
    study_id: str,
    synthetic: dict[str, str],
    needed: list[str],
    seed: int,
) -> None:
    """Submit one classifier run to MLflow's Kubernetes backend (asynchronous)."""
    import mlflow.projects

    root = Path(__file__).resolve().parents[2]
    mlflow.projects.run(
        str(root),
        entry_point="train_classifier",
        backend="kubernetes",
        backend_config=str(root / "docker" / "kubernetes_config.json"),
        synchronous=False,
        parameters={
            "scenario": scenario,
            "profile": profile,
            "study_id": study_id,
            "seed": seed,
            "synthetic": ",".join(f"{m}={synthetic[m]}" for m in needed),
        },
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug study`."""
    parser.add_argument("--profile", default="quick", choices=("paper", "quick", "smoke"))
    parser.add_argument(
        "--scenarios",
        default="default",
        help="default (O,CA,FM,O+FM,O+FM+CA), all (the 18), or a list",
    )
    parser.add_argument("--study-id", default=None, help="default: <profile>-s<seed>")
    parser.add_argument(
        "--phantom-scale",
        type=float,
        default=None,
        help="phantom cohort size (1 = the paper's 2954 cases)",
    )
    parser.add_argument("--manifest", default=None, help="use a real cohort instead of the phantom")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="local", choices=("local", "kubernetes"))


def run(args: argparse.Namespace) -> int:
    """`thyroaug study`."""
    out = run_study(
        args.profile,
        args.scenarios,
        args.study_id,
        args.phantom_scale,
        args.manifest,
        args.seed,
        args.backend,
    )
    print_summary(out)
    return 0


def print_summary(out: dict[str, Any]) -> None:
    """Where the results are and how to look at them."""
    print(f"\nstudy {out['study_id']} finished (parent run {out['parent_run_id']})")
    if out["reused"]:
        print(f"reused finished steps: {', '.join(out['reused'])}")
    if out["missing"]:
        print(f"scenarios without a run: {', '.join(out['missing'])}")
    print(f"report: {out['report']}")
    uri = out["tracking_uri"]
    if uri.startswith("sqlite:"):
        print(f"browse: .venv/bin/mlflow ui --backend-store-uri {uri}  -> http://127.0.0.1:5000")
    else:
        print(f"browse: {uri}")
