"""What a person sees in a real browser after a smoke study: the MLflow UI and the HTML report.

A smoke study (O, CA, FM, O+FM: FM registers ``thyroaug-fm@champion``) fills a private local store;
``mlflow ui`` serves it on 127.0.0.1; headless Chromium loads each page, runs the React app and
dumps the rendered DOM (``--dump-dom``) and a screenshot in the same call. The assertions read the
text a person reads on the page, not the REST API.

Set ``THYROAUG_UI_SHOTS=<folder>`` to keep the screenshots and DOMs for a look.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import RegisteredModel

from thyroaug.jobs.commands import main
from thyroaug.tracking.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SCENARIOS = ("O", "CA", "FM", "SD1", "O+FM")
STUDY_ID = "ui"
# flags that render the MLflow SPA without a display: virtual time lets the app's fetches and
# renders finish before the DOM is dumped; a fresh profile per page (localStorage keeps filters)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
RANDOM_RUN_NAME = re.compile(r"^[a-z]+-[a-z]+-\d{1,4}$")  # MLflow's generated names: bold-owl-123


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _visible_text(dom: str) -> str:
    """The page's text as a person reads it (scripts, styles and <noscript> dropped)."""
    dom = re.sub(r"<(script|style|noscript)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom))).strip()


class Browser:
    """Headless Chromium: one call per page gives the rendered DOM and a screenshot."""

    def __init__(self, binary: str, out: Path) -> None:
        self.binary = binary
        self.out = out
        out.mkdir(parents=True, exist_ok=True)

    def open(self, name: str, url: str, budget_ms: int = 15000) -> tuple[str, str]:
        """(rendered DOM, visible text) of ``url``; saves ``<name>.html`` and ``<name>.png``.

        ``budget_ms``: virtual time the page gets to fetch and render before the DOM is dumped.
        """
        shot = self.out / f"{name}.png"
        cmd = [
            self.binary,
            *CHROMIUM_FLAGS,
            f"--virtual-time-budget={budget_ms}",
            f"--user-data-dir={self.out / ('profile-' + name)}",
            "--dump-dom",
            f"--screenshot={shot}",
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        dom = proc.stdout
        (self.out / f"{name}.html").write_text(dom)
        shutil.rmtree(self.out / f"profile-{name}", ignore_errors=True)
        assert proc.returncode == 0 and dom, (
            f"chromium failed on {url} (rc {proc.returncode}): {proc.stderr[-1500:]}"
        )
        return dom, _visible_text(dom)


def _start_mlflow_ui(home: Path, backend_uri: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
    cmd += [
        "ui",
        "--backend-store-uri",
        backend_uri,
        "--default-artifact-root",
        (home / "mlartifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            cmd, cwd=home, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow ui exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, base
        except OSError:
            pass
        time.sleep(0.5)
    _stop(proc)
    raise AssertionError(f"mlflow ui did not answer /health in 90 s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass


def _report_path(printed: str, client: MlflowClient, compare_id: str, dest: Path) -> Path:
    """The report the study printed (a local file URI), else the compare run's artifact."""
    match = re.search(r"^report: (\S+)$", printed, flags=re.M)
    if match and match.group(1).startswith("file://"):
        path = Path(url2pathname(urlparse(match.group(1)).path))
        if path.is_file():
            return path
    return Path(client.download_artifacts(compare_id, "compare/report.html", str(dest)))


def _copy_for_people(src: Path) -> None:
    target = os.environ.get("THYROAUG_UI_SHOTS")
    if not target:
        return
    Path(target).mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".png", ".html"):
            shutil.copy2(f, Path(target) / f.name)


def test_mlflow_ui_and_report_show_the_study_in_a_browser(
    tracking_home: Path, tmp_path: Path, capsys
) -> None:
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium/chromium-browser binary (Debian: apt-get install chromium)")

    code = main(
        ["study", "--profile", "smoke", "--scenarios", ",".join(SCENARIOS), "--study-id", STUDY_ID]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed[-2000:]

    client = MlflowClient()
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.study_id = '{STUDY_ID}' and tags.step = 'study'",
    )
    eid = parent.info.experiment_id
    runs = client.search_runs([eid], max_results=1000)
    by_step: dict[str, list[Run]] = {}
    for r in runs:
        by_step.setdefault(r.data.tags.get("step", ""), []).append(r)
    (o_run,) = [r for r in by_step["train_classifier"] if r.data.tags.get("scenario") == "O"]
    (compare,) = by_step["compare"]
    report = _report_path(printed, client, compare.info.run_id, tmp_path / "report")
    model = client.get_registered_model("thyroaug-fm")
    assert "champion" in model.aliases, model.aliases

    shots = tmp_path / "ui"
    browser = Browser(binary, shots)
    try:
        _check_mlflow_ui(browser, tracking_home, eid, runs, o_run, compare.info.run_id, model)
        _check_report(browser, report, client, by_step["synthesize"], tmp_path / "grids")
        pngs = [f for f in shots.iterdir() if f.suffix == ".png"]
        assert len(pngs) == 8 and all(f.stat().st_size > 10_000 for f in pngs), pngs
    finally:
        _copy_for_people(shots)


def _check_mlflow_ui(
    browser: Browser,
    home: Path,
    eid: str,
    runs: list[Run],
    o_run: Run,
    compare_id: str,
    model: RegisteredModel,
) -> None:
    """Experiment, runs table, one classifier run, the registry and the artifact viewer."""
    proc, base = _start_mlflow_ui(home, os.environ["MLFLOW_TRACKING_URI"], home / "ui.log")
    try:
        # the experiment as MLflow 3 opens it (its default workflow decides the first tab)
        _, text = browser.open("1-experiment", f"{base}/#/experiments/{eid}")
        assert "thyroaug" in text, text[:1500]

        # the runs table: children are folded under the study run by default
        _, text = browser.open("2-runs", f"{base}/#/experiments/{eid}/runs")
        assert f"study-{STUDY_ID}" in text, text[:2000]

        # sorted by name the table is flat: every run as a person reads its name
        dom, text = browser.open(
            "3-runs-flat",
            f"{base}/#/experiments/{eid}/runs?orderByKey=attributes.run_name&orderByAsc=true",
        )
        link = re.compile(
            rf'href="#/experiments/{eid}/runs/([0-9a-f]{{32}})"[^>]*>(?:<[^>]+>)*([^<]+)<'
        )
        shown = {run_id: name.strip() for run_id, name in link.findall(dom)}
        expected = {r.info.run_id: r.info.run_name for r in runs}
        assert shown == expected, f"runs table shows {shown}, store has {expected}"
        names = set(shown.values())
        assert {f"{s}-smoke-s0" for s in SCENARIOS} | {f"study-{STUDY_ID}"} <= names, names
        assert not [n for n in names if RANDOM_RUN_NAME.match(n)], names

        # one classifier run: name, description, dataset input
        run_url = f"{base}/#/experiments/{eid}/runs/{o_run.info.run_id}"
        _, text = browser.open("4-run-O", run_url)
        note = o_run.data.tags.get("mlflow.note.content", "")
        assert note.startswith("ResNet18 ("), note
        assert "O-smoke-s0" in text
        assert "Description" in text and " ".join(note.split())[:80] in text, text[:3000]
        datasets = [d.dataset for d in o_run.inputs.dataset_inputs]
        assert any(re.fullmatch(r"thyroaug-cohort-\d+px", d.name) for d in datasets), datasets
        for d in datasets:
            assert f"{d.name} ({d.digest})" in text, (d.name, text[-3000:])

        # registry: the alias in the list, the model card on the model page
        _, text = browser.open("5-models", f"{base}/#/models")
        assert "thyroaug-fm" in text and "@ champion" in text, text[:2000]
        _, text = browser.open("6-model-fm", f"{base}/#/models/thyroaug-fm")
        title = model.description.splitlines()[0].lstrip("# ").strip()
        assert title and title in text, (title, text[:2000])
        assert "Intended use:" in text and "Must not be used for:" in text, text[:2000]
        assert "@ champion" in text, text[-2000:]

        # the report inside MLflow's artifact viewer (an iframe of the artifact)
        art = f"{base}/#/experiments/{eid}/runs/{compare_id}/artifacts/compare/report.html"
        dom, text = browser.open("7-compare-artifacts", art, budget_ms=60000)  # ~0.5 MB page
        assert "report.html" in text and "paired_tests.csv" in text, text[:2000]
        assert 'class="mlflow-html-iframe"' in dom
    finally:
        _stop(proc)


def _check_report(
    browser: Browser, report: Path, client: MlflowClient, synth: list[Run], grids: Path
) -> None:
    """The study's own HTML report, opened as a file: the findings first, the data named as the
    phantom, the claims with verdicts, Table 2 with intervals, key contrasts, and one sample grid
    per method and class, each the very image its synthesize run logged."""
    dom, text = browser.open("8-report", report.as_uri())
    headings = re.findall(r"<h2[^>]*>(.*?)</h2>", dom, flags=re.S)
    assert headings[0] == "Findings" and headings.index("Findings") < next(
        i for i, h in enumerate(headings) if h.startswith("Table 2")
    ), headings
    assert "phantom cohort" in text and "clinical numbers are not expected" in text
    assert "The paper's claims" in text and '<table id="claims">' in dom.replace("'", '"')
    assert re.search(r"(reproduced|contradicted|inconclusive|not testable|not run)", text)
    assert "Deviations from the paper recorded by these runs" in text, text[:1500]
    assert re.search(r"\d\.\d{3} \[-?\d\.\d{2}, -?\d\.\d{2}\]", text), text[:3000]
    assert "Key contrasts" in text and "unadjusted" in text
    for test_name in ("McNemar", "paired bootstrap", "DeLong"):
        assert test_name in text, test_name
    assert all(f"<th>{s}" in dom for s in SCENARIOS), "a scenario row is missing in Table 2"
    shown = _grid_images(dom)
    assert {m for m, _ in shown} == {"FM", "SD1"}, sorted(shown)
    for run in synth:
        method = run.data.tags["method"]
        for cls in ("DG", "NG", "NL", "TI"):
            logged = client.download_artifacts(
                run.info.run_id, f"synthetic/{method}/grid_{cls}.png", str(grids / method)
            )
            assert shown[(method, cls)] == Path(logged).read_bytes(), (method, cls)
    assert len(set(shown.values())) == len(shown), "two methods or classes show the same grid"
    gradcam = dom[dom.index('id="gradcam"') :] if 'id="gradcam"' in dom else ""
    assert 'alt="Grad-CAM panel"' in gradcam and "under O and O+FM" in gradcam, gradcam[:800]


def _grid_images(dom: str) -> dict[tuple[str, str], bytes]:
    """{(method, class): PNG bytes} of the report's sample-grid figures."""
    import base64

    figures = re.findall(
        r'<figure data-method="([^"]+)" data-class="([^"]+)">\s*<img[^>]*src="data:image/png;'
        r'base64,([^"]+)"',
        dom.replace("'", '"'),
    )
    return {(m, c): base64.b64decode(data) for m, c, data in figures}
