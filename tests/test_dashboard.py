"""optuna-dashboard, for real: a server on a loopback port and a headless Chromium page."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mhtrain.study import runner, study_config
from tests.conftest import ROOT, tiny_for

pytestmark = pytest.mark.slow  # a real dashboard server and headless Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def serve(storage: str):
    """`python -m mhtrain.study dashboard` (what `make dashboard` runs) on a free loopback port;
    yields its base URL once it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mhtrain.study", "dashboard", "--storage", storage,
                             "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # importing the study package (Lightning) takes seconds
            try:
                get_json(f"{base}/api/studies")
                break
            except OSError:
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path):
    """A two-trial study made by the harness (checkpoints kept), served by optuna-dashboard."""
    folder = tmp_path_factory.mktemp("dash")
    storage = f"sqlite:///{folder / 'optuna.db'}"
    study = study_config.load("lr", keep_checkpoints="all", n_trials=2, name="dash_study",
                       extra_overrides=tiny_for(tiny_data))
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        runner.run(study, storage, progress=False)
    finally:
        os.chdir(cwd)
    yield from serve(storage)


def test_dashboard_api_serves_the_study(dashboard):
    studies = get_json(f"{dashboard}/api/studies")["study_summaries"]
    (summary,) = [s for s in studies if s["study_name"] == "dash_study"]
    detail = get_json(f"{dashboard}/api/studies/{summary['study_id']}?after=0")
    assert len(detail["trials"]) == 2
    for trial in detail["trials"]:
        assert trial["state"] == "Complete"
        assert len(trial["intermediate_values"]) == 2
        (artifact,) = trial["artifacts"]  # the kept checkpoint, listed on its trial
        with urllib.request.urlopen(f"{dashboard}/artifacts/{summary['study_id']}/{trial['trial_id']}/"
                                    f"{artifact['artifact_id']}", timeout=10) as r:
            assert len(r.read()) > 100_000  # served from the store beside the storage
    assert detail["objective_names"] == ["val/digit_acc"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_dashboard_page_renders_in_headless_chromium(dashboard, tmp_path: Path):
    studies = get_json(f"{dashboard}/api/studies")["study_summaries"]
    study_id = next(s["study_id"] for s in studies if s["study_name"] == "dash_study")
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
         "--virtual-time-budget=15000", "--dump-dom", f"{dashboard}/dashboard/studies/{study_id}"],
        capture_output=True, text=True, timeout=120)
    assert "dash_study" in proc.stdout, proc.stderr[-2000:]


def test_dashboard_reads_a_study_while_workers_write(tmp_path: Path, tiny_data: Path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    workers = subprocess.Popen(
        [sys.executable, str(ROOT / "studies" / "lr.py"), "--no-progress", "--storage", storage,
         "--study-name", "live", "--n-trials", "6", "--workers", "2", "--pruner", "none",
         *tiny_for(tiny_data, epochs=3)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    try:
        for _ in range(600):
            if Path(tmp_path / "optuna.db").exists():
                break
            time.sleep(0.2)
        for base in serve(storage):
            while workers.poll() is None:
                studies = get_json(f"{base}/api/studies")["study_summaries"]
                live = [s for s in studies if s["study_name"] == "live"]
                if live:
                    detail = get_json(f"{base}/api/studies/{live[0]['study_id']}?after=0")
                    seen.append(sum(t["state"] == "Complete" for t in detail["trials"]))
                time.sleep(0.5)
            detail = get_json(f"{base}/api/studies/{live[0]['study_id']}?after=0")
            final = sum(t["state"] == "Complete" for t in detail["trials"])
    finally:
        if workers.poll() is None:
            workers.kill()
    assert workers.returncode == 0, workers.stderr.read()[-2000:]
    assert final == 6
    assert seen and min(seen) < 6  # the dashboard answered while trials were still being written


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_every_figure_the_project_stores_fits_the_dashboards_box(tmp_path: Path):
    """optuna-dashboard 0.21 draws a stored figure in a 450 px box on the study's first page: the
    race's figure and a PBT lineage (4 panels) must fit it, not show a panel and a half."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from mhtrain.study.dashboard_figures import store_figure, store_lineage
    from mhtrain.study.race import DEFAULT, judge

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    ostudy = optuna.create_study(study_name="pbt_loss_weights", storage=storage, direction="maximize")
    ostudy.set_metric_names(["val/digit_acc"])
    start = {"model.optimizer.lr": 1e-3, "model.loss_weights.thickness": 0.5,
             "model.loss_weights.smoothness": 0.5}
    for _ in range(2):
        ostudy.add_trial(create_trial(
            params=start, distributions=dict.fromkeys(start, FloatDistribution(1e-4, 2.0)),
            value=0.9, intermediate_values={1: 0.8, 2: 0.9},
            user_attrs={"pbt_schedule": [{"epoch": 0, "parent": None, **start}]}))
    store_lineage(ostudy)
    arms = ["trial 0", "trial 1", DEFAULT]
    values = {a: [0.99 - 0.01 * i + 0.001 * (r % 3) for r in range(8)] for i, a in enumerate(arms)}
    store_figure(ostudy, judge(arms, values, {}, True, 0.002, 8))
    for base in serve(storage):
        study_id = next(s["study_id"] for s in get_json(f"{base}/api/studies")["study_summaries"])
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
             "--window-size=1600,2400", "--virtual-time-budget=20000", "--dump-dom",
             f"{base}/dashboard/studies/{study_id}"], capture_output=True, text=True, timeout=120)
    box = r'id="user-defined-plot:([^"]+)".*?class="[^"]*svg-container" style="[^"]*height: (\d+)px'
    drawn = re.findall(box, proc.stdout)
    assert {name for name, _ in drawn} == {"race", "pbt_lineage"}, proc.stdout[-3000:]
    assert all(int(h) <= 450 for _, h in drawn), drawn
