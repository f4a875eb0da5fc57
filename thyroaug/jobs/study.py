"""`thyroaug study`: the whole study as one parent MLflow run with a child run per step.

Steps (each an ordinary `thyroaug <command>` run, so it logs exactly what it logs when run alone),
in batches of steps that do not depend on each other:

  1. prepare_data
  2. classifier_O (its penultimate layer is the domain feature extractor of synthesis FID/KID)
     together with train_<family> for every generator family a scenario needs
  3. synthesize_<METHOD> for every generator method a scenario needs
  4. classifier_<scenario> for every other scenario, and classifier_<scenario>_s<seed> for every
     scenario and every further training seed (``--seeds``)
  5. compare

Seeds: ``--seed`` is the study's base seed: the cohort split, the generators' training and
sampling, and the first training seed of every classifier (steps ``classifier_<scenario>``, the
same keys, command lines and config hashes as a single-seed study). ``--seeds 0,1,2`` trains every
scenario's classifier once per seed (``--seed s``); the seeds other than the base seed run as
steps ``classifier_<scenario>_s<seed>``. Generators, synthetic sets and the cohort are made once.
Without ``--seeds`` the list is ``[--seed]``; without ``--seed`` the base seed is the first of
``--seeds``; both given: ``--seeds`` must contain ``--seed``. The default study id,
``<profile>-s<base seed>``, does not name the list, so ``--seeds 0,1,2`` after a single-seed study
of seed 0 resumes it: its seed-0 runs are reused and only seeds 1 and 2 are trained.

``--executor sequential`` (default) runs the steps of a batch one after another in this process;
``--executor ray`` runs them as Ray tasks (``thyroaug.jobs.executors``) on a local Ray instance
using this machine's cores and GPUs, or on an existing cluster (``--ray-address``).
``--backend kubernetes`` dispatches the classifier runs to MLflow's Kubernetes backend instead.

Restarts: every step has a config hash (its command line + the hashes of the steps it consumes).
A step whose FINISHED run with the same study id and hash exists is skipped and its outputs are
read back from that run, so a killed study restarts where it stopped, with either executor. The
parent run is found again by its study id. ``--scenarios``: ``all`` (the default: the paper's 18)
or a comma-separated list (e.g. ``O,CA,FM,O+FM,O+FM+CA``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.projects
from mlflow import MlflowClient

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.config import resolve
from thyroaug.contract import (
    DEFAULT_COHORT_DIR,
    EXPERIMENT,
    STEP_COMPARE,
    STEP_PREPARE,
    STEP_STUDY,
    TAG_COHORT_HASH,
    TAG_CONFIG_HASH,
    TAG_MLFLOW_NOTE,
    TAG_PROFILE,
    TAG_SEEDS,
    TAG_STEP,
    TAG_STUDY_ID,
    TAG_STUDY_STEP,
    synthetic_artifact,
)
from thyroaug.errors import ConfigError, ThyroaugError
from thyroaug.generators import registry
from thyroaug.generators.family import check_family, study_arguments
from thyroaug.jobs.common import PHANTOM_SCALE, add_profile
from thyroaug.jobs.compare import compare_study
from thyroaug.jobs.executors import EXECUTORS, Executor, StepSpec, make_executor
from thyroaug.scenarios import PAPER_SCENARIOS, Scenario, canonical
from thyroaug.tracking.runs import tag_clause
from thyroaug.tracking.setup import RUN_TAGS_ENV, configure_tracking, project_home, resolve_uris
from thyroaug.utils.env import scoped_env

log = logging.getLogger(__name__)


def parse_scenarios(text: str) -> list[str]:
    """``all`` (= ``default``: the paper's 18) / a comma-separated list -> canonical names."""

    if text in ("", "default", "all"):
        names = list(PAPER_SCENARIOS)
    else:
        names = [s.strip() for s in text.split(",") if s.strip()]
    out: list[str] = []
    for name in names:
        c = canonical(name)
        if c not in out:
            out.append(c)
    return out


def resolve_seeds(
    seed: int | None = None, seeds: str | Sequence[int] | None = None
) -> tuple[int, list[int]]:
    """(base seed, training seeds with the base seed first) from ``--seed`` and ``--seeds``.

    Raises:
        ConfigError: a seed that is not an integer, or a ``--seeds`` list without ``--seed``.
    """
    if isinstance(seeds, str):
        try:
            parsed = [int(x) for x in seeds.replace(" ", "").split(",") if x]
        except ValueError as exc:
            raise ConfigError(f"--seeds {seeds!r}: a comma-separated list of integers") from exc
    else:
        parsed = [int(x) for x in seeds or []]
    parsed = list(dict.fromkeys(parsed))
    if not parsed:
        base = 0 if seed is None else int(seed)
        return base, [base]
    base = parsed[0] if seed is None else int(seed)
    if base not in parsed:
        raise ConfigError(
            f"--seeds {','.join(map(str, parsed))} does not contain --seed {base}: --seed is the "
            "study's base seed (cohort split, generators and the first classifier seed); add it "
            "to --seeds or leave --seed out (the base seed is then the first of --seeds)"
        )
    return base, [base, *(s for s in parsed if s != base)]


def classifier_key(scenario: str, seed: int, base_seed: int) -> str:
    """Step key of one classifier run: ``classifier_<scenario>`` for the study's base seed (as
    in a single-seed study), ``classifier_<scenario>_s<seed>`` for every other training seed."""
    return f"classifier_{scenario}" if seed == base_seed else f"classifier_{scenario}_s{seed}"


def methods_needed(scenarios: list[str]) -> list[str]:
    """Generator methods (SD1..SD4, FM, plug-ins) the scenarios consume, in registry order."""

    parts = {p for s in scenarios for p in Scenario.parse(s).generator_methods}
    return [m for m in registry.generator_methods() if m in parts]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Planned:
    """A step the study wants: its spec, config hash and the finished run to reuse, if any."""

    spec: StepSpec
    config_hash: str
    found: Any = None


@dataclass
class Study:
    """State of one study execution: the parent run, the executor and the steps done so far."""

    study_id: str
    profile: str
    client: Any
    experiment_id: str
    executor: Executor
    env: dict[str, str] = field(default_factory=dict)
    parent_id: str = ""
    gpus: float = 0.0
    done: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def find_step(self, key: str, config_hash: str) -> Any | None:
        """The latest FINISHED run of this step with this config hash, or None."""
        runs = self.client.search_runs(
            [self.experiment_id],
            f"{tag_clause(TAG_STUDY_ID, self.study_id)} and {tag_clause(TAG_STUDY_STEP, key)} "
            f"and {tag_clause(TAG_CONFIG_HASH, config_hash)} and attributes.status = 'FINISHED'",
            max_results=1,
            order_by=["attributes.end_time DESC"],
        )
        return runs[0] if runs else None

    def plan(
        self, key: str, argv: list[str], depends: list[str] | None = None, kind: str = "cpu"
    ) -> Planned:
        """A step with its hash; ``found`` is set when an identical finished run exists."""
        config_hash = _hash({"argv": argv, "depends": depends or [], "profile": self.profile})
        tags = {TAG_STUDY_ID: self.study_id, TAG_STUDY_STEP: key, TAG_CONFIG_HASH: config_hash}
        env = {**self.env, RUN_TAGS_ENV: json.dumps(tags)}
        gpus = {"train": 1.0, "synthesize": 1.0, "classifier": 0.25}.get(kind, 0.0)
        # a killed classifier step continues from its checkpoint (outside the hash, so that
        # studies from before --resume stay reusable)
        run_argv = [*argv, "--resume"] if kind == "classifier" else argv
        spec = StepSpec(key, run_argv, env, num_cpus=1.0, num_gpus=gpus if self.gpus >= 1 else 0.0)
        return Planned(spec, config_hash, self.find_step(key, config_hash))

    def execute(self, batch: list[Planned]) -> dict[str, tuple[Any, str]]:
        """Run the batch's unfinished steps (in parallel with Ray); {key: (run, config hash)}.

        Raises:
            ThyroaugError: a step failed; the message is the step's own reason.
        """
        todo = [p for p in batch if p.found is None]
        for p in batch:
            if p.found is not None:
                log.info("study %s: step %s already finished, reused", self.study_id, p.spec.key)
                self.reused.append(p.spec.key)
        errors = self.executor.run([p.spec for p in todo]) if todo else {}
        failed = {k: m for k, m in errors.items() if m is not None}
        if failed:
            lines = "\n".join(f"  {k}: {m}" for k, m in failed.items())
            raise ThyroaugError(
                f"study step(s) failed:\n{lines}\nFix the cause above and run the same command "
                "again: finished steps are reused, the failed ones run again."
            )
        out = {}
        for p in batch:
            run = p.found or self.find_step(p.spec.key, p.config_hash)
            if run is None:
                raise ThyroaugError(
                    f"study step {p.spec.key} ended without a FINISHED run tagged "
                    f"config_hash={p.config_hash} (was it killed?); run the study again"
                )
            if p.found is None:
                self.done.append(p.spec.key)
            out[p.spec.key] = (run, p.config_hash)
        return out


def _registered_uri(client: Any, name: str, run_id: str) -> str:
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        raise ThyroaugError(f"run {run_id} registered no version of {name}")
    return f"models:/{name}/{max(int(v.version) for v in versions)}"


@dataclass
class StudyPlan:
    """What one run of ``run_study`` is asked to do."""

    profile: str
    names: list[str]
    study_id: str
    seed: int
    cohort_dir: Path
    backend: str = "local"
    workdir: Path = Path("outputs")
    synthetic: dict[str, str] = field(default_factory=dict)
    method_hash: dict[str, str] = field(default_factory=dict)
    feature_args: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # training seeds, base seed first

    @property
    def per_class(self) -> int:
        """Synthetic images per class and method: what the profile's classifier takes."""

        return resolve(ClassifierConfig, self.profile).per_class_synthetic

    @property
    def training_seeds(self) -> list[int]:
        return self.seeds or [self.seed]

    def classifier_steps(self) -> list[tuple[str, str, int]]:
        """(step key, scenario, training seed) of every classifier run, base seed first."""
        return [
            (classifier_key(s, seed, self.seed), s, seed)
            for seed in self.training_seeds
            for s in self.names
        ]

    def classifier_argv(self, scenario: str, seed: int | None = None) -> list[str]:

        seed = self.seed if seed is None else seed
        argv = ["train-classifier", "--scenario", scenario, "--profile", self.profile]
        argv += ["--cohort", str(self.cohort_dir), "--seed", str(seed)]
        argv += ["--study-id", self.study_id]
        for m in Scenario.parse(scenario).generator_methods:
            argv += ["--synthetic", f"{m}={self.synthetic[m]}"]
        return argv

    def classifier_depends(self, scenario: str, prep_hash: str) -> list[str]:

        return [
            prep_hash,
            *(self.method_hash[m] for m in Scenario.parse(scenario).generator_methods),
        ]


def _prepare(st: Study, plan: StudyPlan, out: Path, scale: float, manifest: str | None) -> str:
    """Batch 1: the cohort; returns its content hash (what later steps depend on)."""
    if manifest:
        argv = ["prepare", "--manifest", manifest, "--out", str(plan.cohort_dir)]
    else:
        argv = ["prepare", "--phantom-scale", str(scale), "--phantom-dir", str(out / "phantom")]
        argv += ["--out", str(plan.cohort_dir)]
    argv += ["--seed", str(plan.seed)]
    # A manifest's bytes enter the hash so that an edited manifest is prepared again; the
    # cohort's content hash (logged by prepare) is what downstream steps depend on.
    manifest_hash = _hash(Path(manifest).read_bytes().hex()) if manifest else ""
    ((run, _),) = st.execute([st.plan(STEP_PREPARE, argv, [manifest_hash])]).values()
    return run.data.tags.get(TAG_COHORT_HASH) or run.info.run_id


def _generators_and_o(st: Study, plan: StudyPlan, prep_hash: str) -> dict[str, str]:
    """Batch 2 (classifier O + every needed family's training) and batch 3 (synthesis)."""
    methods = methods_needed(plan.names)
    families = [f for f in registry.families() if any(m in methods for m in f.methods)]
    batch = []
    if "O" in plan.names and plan.backend == "local":
        batch.append(
            st.plan("classifier_O", plan.classifier_argv("O"), [prep_hash], kind="classifier")
        )
    for fam in families:
        # per-study checkpoints: a killed study continues inside the step
        argv = study_arguments(
            fam.name,
            profile=plan.profile,
            cohort=plan.cohort_dir,
            seed=plan.seed,
            output=plan.workdir / fam.name,
        )
        batch.append(st.plan(fam.entry_point, argv, [prep_hash], kind="train"))
    runs = st.execute(batch)
    if "classifier_O" in runs:
        o_run = runs["classifier_O"][0]
        plan.feature_args = ["--feature-model", f"runs:/{o_run.info.run_id}/classifier-O"]
    synth = []
    for fam in families:
        gen_run, gen_hash = runs[fam.entry_point]
        model_uri = _registered_uri(st.client, fam.registered_name, gen_run.info.run_id)
        for method in (m for m in fam.methods if m in methods):
            argv = ["synthesize", "--generator", model_uri, *fam.mode_args(method)]
            argv += ["--per-class", str(plan.per_class), "--cohort", str(plan.cohort_dir)]
            argv += ["--seed", str(plan.seed), *plan.feature_args]
            synth.append(st.plan(f"synthesize_{method}", argv, [gen_hash], kind="synthesize"))
    for key, (run, config_hash) in st.execute(synth).items():
        method = key.removeprefix("synthesize_")
        plan.synthetic[method] = f"runs:/{run.info.run_id}/{synthetic_artifact(method)}"
        plan.method_hash[method] = config_hash
    return {k: r.info.run_id for k, (r, _) in runs.items()}


def _classifiers(st: Study, plan: StudyPlan, prep_hash: str, done: set[str]) -> None:
    """Batch 4: one classifier per remaining (scenario, training seed) (or Kubernetes jobs)."""
    rest = [(k, s, seed) for k, s, seed in plan.classifier_steps() if k not in done]
    if plan.backend == "kubernetes":
        for _, scenario, seed in rest:
            _dispatch_kubernetes(scenario, plan, seed)
        return
    st.execute(
        [
            st.plan(
                key,
                plan.classifier_argv(s, seed),
                plan.classifier_depends(s, prep_hash),
                kind="classifier",
            )
            for key, s, seed in rest
        ]
    )


def _open_parent(
    st: Study, names: list[str], seeds: list[int], echo: Callable[[str], None]
) -> None:
    """Find the study's parent run again (resume) or create it; params ``seed`` (the base
    seed) and ``seeds`` (the training seeds; a resume with another list sets tag ``seeds``)."""
    parents = st.client.search_runs(
        [st.experiment_id],
        f"{tag_clause(TAG_STUDY_ID, st.study_id)} and {tag_clause(TAG_STEP, STEP_STUDY)}",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    text = ",".join(map(str, seeds))
    if parents:
        st.parent_id = parents[0].info.run_id
        st.client.update_run(st.parent_id, status="RUNNING")
        logged = parents[0].data.params.get("seeds")
        if logged is None:  # a parent from before --seeds
            st.client.log_param(st.parent_id, "seeds", text)
        elif logged != text:  # params are immutable: the tag says what this resume trains
            st.client.set_tag(st.parent_id, TAG_SEEDS, text)
        echo(f"resuming study {st.study_id} (parent run {st.parent_id}, seeds {text})")
        return
    parent = st.client.create_run(
        st.experiment_id,
        run_name=f"study-{st.study_id}",
        tags={TAG_STEP: STEP_STUDY, TAG_STUDY_ID: st.study_id, TAG_PROFILE: st.profile},
    )
    st.parent_id = parent.info.run_id
    st.client.log_param(st.parent_id, "profile", st.profile)
    st.client.log_param(st.parent_id, "scenarios", ",".join(names))
    st.client.log_param(st.parent_id, "seed", seeds[0])
    st.client.log_param(st.parent_id, "seeds", text)
    st.client.set_tag(st.parent_id, TAG_SEEDS, text)
    st.client.log_param(st.parent_id, "executor", st.executor.name)


def run_study(
    profile: str = "quick",
    scenarios: str = "default",
    study_id: str | None = None,
    phantom_scale: float | None = None,
    manifest: str | None = None,
    seed: int | None = None,
    backend: str = "local",
    echo: Callable[[str], None] = print,
    executor: str | Executor = "sequential",
    ray_address: str | None = None,
    seeds: str | Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study; returns {study_id, parent_run_id, report, steps_run, reused}.

    ``seed`` is the base seed (cohort, generators, first classifier seed; default 0, or the
    first of ``seeds``), ``seeds`` the classifier training seeds (``resolve_seeds``).
    """

    names = parse_scenarios(scenarios)
    for method in methods_needed(names):  # a broken family stops the study before any step
        check_family(registry.family_of(method))
    seed, seed_list = resolve_seeds(seed, seeds)
    scale = phantom_scale if phantom_scale is not None else PHANTOM_SCALE[profile]
    study_id = study_id or f"{profile}-s{seed}"
    runner = make_executor(executor, ray_address) if isinstance(executor, str) else executor
    uri = configure_tracking()
    exp = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT)
    st = Study(study_id, profile, MlflowClient(), exp.experiment_id, runner)
    st.gpus = runner.capacity()["GPU"] if hasattr(runner, "capacity") else 0.0
    _open_parent(st, names, seed_list, echo)
    home = project_home()
    st.env = {
        "MLFLOW_TRACKING_URI": resolve_uris()[0],
        "MLFLOW_EXPERIMENT_NAME": exp.name,
        "MLFLOW_PARENT_RUN_ID": st.parent_id,
        "THYROAUG_HOME": str(home),
    }
    out = home / "outputs" / study_id
    # the one default cohort of every entry point, so that `mlflow run . -e train_classifier
    # -P scenario=O+FM` after a study uses the cohort its generators were trained on
    plan = StudyPlan(profile, names, study_id, seed, home / DEFAULT_COHORT_DIR, backend, out)
    plan.seeds = seed_list
    t0 = time.monotonic()
    status = "FAILED"
    try:
        prep_hash = _prepare(st, plan, out, scale, manifest)
        echo(f"[study] cohort ready ({time.monotonic() - t0:.0f} s)")
        done = _generators_and_o(st, plan, prep_hash)
        echo(f"[study] O and generators done ({time.monotonic() - t0:.0f} s)")
        _classifiers(st, plan, prep_hash, set(done))
        n_runs = len(names) * len(seed_list)
        echo(f"[study] {n_runs} classifier run(s) done ({time.monotonic() - t0:.0f} s)")
        result = _compare(study_id, exp.name, names, st.parent_id, seed_list)
        status = "FINISHED"
        st.client.set_tag(
            st.parent_id,
            TAG_MLFLOW_NOTE,
            f"Study {study_id} ({profile} profile, executor {runner.name}): {len(names)} "
            f"scenario(s) x {len(seed_list)} training seed(s) on the cohort in {plan.cohort_dir}; "
            f"finished in {(time.monotonic() - t0) / 60:.1f} min. The comparison (paired tests, "
            f"Table 2 with CIs, Table 3, deviations) is the child run compare-{study_id}.",
        )
    finally:
        st.client.log_metric(st.parent_id, "study_seconds", time.monotonic() - t0)
        st.client.set_terminated(st.parent_id, status=status)
        if hasattr(runner, "shutdown") and isinstance(executor, str):
            runner.shutdown()
    return {
        "study_id": study_id,
        "parent_run_id": st.parent_id,
        "report": result["report"],
        "compare_run_id": result["run_id"],
        "missing": result["missing"],
        "steps_run": st.done,
        "reused": st.reused,
        "tracking_uri": uri,
        "seconds": time.monotonic() - t0,
        "experiment_id": exp.experiment_id,
    }


def _compare(
    study_id: str, experiment: str, names: list[str], parent_id: str, seeds: list[int]
) -> dict[str, Any]:
    """The compare step, in this process, as a child run of the study (its training seeds)."""

    tags = json.dumps({TAG_STUDY_STEP: STEP_COMPARE})
    with scoped_env({RUN_TAGS_ENV: tags, "MLFLOW_PARENT_RUN_ID": parent_id}):
        return compare_study(study_id, experiment, expected=names, seeds=seeds)


def _dispatch_kubernetes(scenario: str, plan: StudyPlan, seed: int) -> None:
    """Submit one classifier run to MLflow's Kubernetes backend (asynchronous)."""

    needed = Scenario.parse(scenario).generator_methods
    root = Path(__file__).resolve().parents[2]
    mlflow.projects.run(
        str(root),
        entry_point="train_classifier",
        backend="kubernetes",
        backend_config=str(root / "docker" / "kubernetes_config.json"),
        synchronous=False,
        parameters={
            "scenario": scenario,
            "profile": plan.profile,
            "study_id": plan.study_id,
            "seed": seed,
            "synthetic": ",".join(f"{m}={plan.synthetic[m]}" for m in needed),
        },
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug study`."""

    add_profile(parser)
    parser.add_argument(
        "--scenarios",
        default="all",
        help="all (the paper's 18, default) or a comma-separated list, e.g. O,CA,O+FM",
    )
    parser.add_argument(
        "--study-id", default=None, help="default: <profile>-s<base seed> (not the --seeds list)"
    )
    parser.add_argument(
        "--phantom-scale",
        type=float,
        default=None,
        help="phantom cohort size (1 = the paper's 2954 cases)",
    )
    parser.add_argument("--manifest", default=None, help="use a real cohort instead of the phantom")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="base seed: cohort split, generators, first classifier seed (default 0, or the "
        "first of --seeds)",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="classifier training seeds, e.g. 0,1,2: every scenario is trained once per seed "
        "(generators once); must contain --seed; default: --seed only",
    )
    parser.add_argument(
        "--executor",
        default="sequential",
        choices=EXECUTORS,
        help="run independent steps one by one here (sequential) or as Ray tasks (ray)",
    )
    parser.add_argument("--ray-address", help="existing Ray cluster (default: a local one)")
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
        executor=args.executor,
        ray_address=args.ray_address,
        seeds=args.seeds,
    )
    print_summary(out)
    return 0


def print_summary(out: dict[str, Any]) -> None:
    """Where the results are and how to look at them."""
    print(
        f"\nstudy {out['study_id']} finished in {out['seconds'] / 60:.1f} min "
        f"(parent run {out['parent_run_id']})"
    )
    if out["reused"]:
        print(f"reused finished steps: {', '.join(out['reused'])}")
    if out["missing"]:
        print(f"scenarios without a run: {', '.join(out['missing'])}")
    print(f"report: {out['report']}")
    uri = out["tracking_uri"]
    runs_page = f"#/experiments/{out.get('experiment_id', '')}/runs"
    if uri.startswith("sqlite:"):
        print(f"browse: .venv/bin/mlflow ui --backend-store-uri {uri}")
        print(f"   then open http://127.0.0.1:5000/{runs_page}")
    else:
        print(f"browse: {uri.rstrip('/')}/{runs_page}")
