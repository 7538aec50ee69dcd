"""TensorBoard and MLflow runs per trial: read back with TensorBoard's own reader and, against a
real `mlflow server`, with MlflowClient."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.pruners import ThresholdPruner
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

from mhtrain import program
from mhtrain.study import cli, opening, study_config, workers
from mhtrain.study.ledger import reap
from mhtrain.study.storage import open_storage
from mhtrain.study.summary import summary
from mhtrain.tracking import TRACKING
from mhtrain.train import precheck
from tests.conftest import ROOT, tiny_for

LRS = (3e-3, 3e-3, 1e-7)  # two good trials, then one a threshold pruner stops after an epoch
# the lr space reaches 1e-7: an enqueued value is used only inside the local search space
WIDE_LR = {"model.optimizer.lr": {"type": "float", "low": 1e-8, "high": 1e-1, "log": True}}


def run_study(tmp_path: Path, tiny_data: Path, *extra: str, name: str = "lr", population: int = 1,
              lrs: tuple[float, ...] = LRS, storage: str | None = None):
    """The lr study on tiny data with the trials' learning rates enqueued, trained by one worker
    here; returns (study config, Optuna study)."""
    study = study_config.load("lr", name=name, n_trials=len(lrs), population=population, extra_overrides=[
        *tiny_for(tiny_data), "callbacks.early_stopping=null", *extra], search_space=WIDE_LR)
    ostudy = opening.open_study(study, storage or f"sqlite:///{tmp_path / 'optuna.db'}")
    ostudy.pruner = ThresholdPruner(lower=0.5)  # a chance-level epoch is pruned at once
    for lr in lrs[len(ostudy.trials):]:
        ostudy.enqueue_trial({"model.optimizer.lr": lr})
    workers.work(study, ostudy)
    return study, ostudy


def experiment(ostudy: optuna.Study) -> str:
    """The study's MLflow experiment: its own folder's name, as TensorBoard's."""
    return Path(ostudy.user_attrs["output_root"]).name


def scalars(run_dir: Path) -> dict[str, list[int]]:
    """tag -> steps of a TensorBoard run, read with TensorBoard's own reader."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def hparams(run_dir: Path) -> dict[str, object]:
    """The hyperparameters a run's HPARAMS session holds (as TensorBoard's plugin reads them)."""
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)[hp_metadata.SESSION_START_INFO_TAG]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.string_value or v.number_value for k, v in start.hparams.items()}


def test_tensorboard_writes_a_run_per_trial_with_its_values_against_its_best(tiny_data, tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    study, ostudy = run_study(tmp_path, tiny_data, "logger=[csv,tensorboard]")
    trials = ostudy.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED]
    root = Path(trials[0].user_attrs["output_dir"]).parent
    assert sorted(p.parent.name for p in root.glob("*/events.out.tfevents.*")) == [
        "trial_0000", "trial_0000", "trial_0001", "trial_0001", "trial_0002", "trial_0002"]  # fit, end
    for t in trials:
        run = root / f"trial_{t.number:04d}"
        steps = scalars(run)
        assert len(steps["val/digit_acc"]) == t.user_attrs["epochs"]  # one point per epoch trained
        assert {"train/loss", "val/loss", "val/acc_best", "epoch"} <= set(steps)
        acc = EventAccumulator(str(run))
        acc.Reload()
        assert acc.Scalars("best/val/digit_acc")[0].value == pytest.approx(
            t.user_attrs["best_val/digit_acc"], abs=1e-6)
        assert hparams(run) == {"model.optimizer.lr": pytest.approx(t.params["model.optimizer.lr"]),
                                "trial": t.number, "state": t.state.name}
        assert (run / "csv" / "metrics.csv").is_file()  # csv as well, as asked
    text = summary(ostudy, study.max_epochs, "sqlite:///optuna.db")
    line = next(x for x in text.splitlines() if x.startswith("curves: "))
    command = line.removeprefix("curves: ").split("  (or")[0]
    assert command == f"{program('tensorboard')} --logdir {root.resolve()} --host 127.0.0.1"
    # as typed in a fresh shell, the environment not activated: it runs (here: its --help)
    fresh = subprocess.run(f"{command} --help", shell=True, capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert fresh.returncode == 0 and "--logdir" in fresh.stdout, fresh.stderr[-2000:]


def test_a_population_member_logs_what_a_solo_trial_logs(tiny_data, tmp_path, monkeypatch):
    roots = {}
    for k in (1, 2):
        (tmp_path / f"k{k}").mkdir()
        monkeypatch.chdir(tmp_path / f"k{k}")
        _, ostudy = run_study(tmp_path / f"k{k}", tiny_data, "logger=tensorboard", population=k)
        assert [t.state for t in ostudy.get_trials()] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED]
        assert all(("population" in t.user_attrs) == (k == 2) for t in ostudy.get_trials())
        roots[k] = Path(ostudy.get_trials()[0].user_attrs["output_dir"]).parent
    for number in range(len(LRS)):
        solo, member = (scalars(roots[k] / f"trial_{number:04d}") for k in (1, 2))
        assert "val/digit_acc" in solo and len(solo) > 10
        assert member == solo  # the same keys at the same steps
        assert hparams(roots[2] / f"trial_{number:04d}") == hparams(roots[1] / f"trial_{number:04d}")


def test_an_unknown_logger_is_one_hydra_line_and_exit_2(capsys):
    assert precheck(["logger=nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "logger" in err and "nope" in err
    assert cli.main("lr", "lr", argv=["logger=nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_mlflow_uri_that_does_not_answer_is_refused_before_any_trial(tiny, tmp_path, monkeypatch,
                                                                         capsys):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"
    code = cli.main("lr", "lr", argv=["--storage", f"sqlite:///{tmp_path / 'o.db'}", "--no-progress",
                                      *tiny, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: logger.mlflow.tracking_uri={uri} does not answer")
    assert not (tmp_path / "o.db").exists() and not (tmp_path / "runs").exists()  # nothing ran


# ---- a real MLflow tracking server (slow tier) ----

def start_mlflow(folder: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a loopback port, SQLite backend and a local artifact folder."""
    port = free_port()
    log = open(folder / "mlflow.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--default-artifact-root", str(folder / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                return proc, uri
        except OSError:
            assert proc.poll() is None, (folder / "mlflow.log").read_text()[-3000:]
            time.sleep(0.5)
    stop(proc)
    raise AssertionError("no answer in 180 s: " + (folder / "mlflow.log").read_text()[-3000:])


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)  # the server and its uvicorn/gunicorn workers
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    pytest.importorskip("mlflow")
    (tmp_path / "server").mkdir()
    proc, uri = start_mlflow(tmp_path / "server")
    yield proc, uri
    if proc.poll() is None:
        stop(proc)


@pytest.mark.slow
def test_studies_log_a_run_per_trial_to_a_real_mlflow_server(mlflow_server, tiny_data, tmp_path,
                                                             monkeypatch):
    from mlflow.tracking import MlflowClient

    _, uri = mlflow_server
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    over = ["logger=[csv,mlflow]", f"logger.mlflow.tracking_uri={uri}"]
    run_study(tmp_path, tiny_data, *over, name="solo", lrs=LRS[:2], storage=storage)
    study, ostudy = run_study(tmp_path, tiny_data, *over, name="solo", storage=storage)  # resumed: +1
    _, pop = run_study(tmp_path, tiny_data, *over, name="pop", population=2, storage=storage)

    client = MlflowClient(uri)
    by_study = {}
    for name, o in (("solo", ostudy), ("pop", pop)):
        found = client.get_experiment_by_name(experiment(o))  # one experiment per study
        runs = client.search_runs([found.experiment_id], order_by=["attributes.run_name ASC"])
        assert [r.info.run_name for r in runs] == ["trial_0000", "trial_0001", "trial_0002"]  # no duplicates
        by_study[name] = runs
    trials = ostudy.get_trials()
    for t, r in zip(trials, by_study["solo"], strict=True):
        assert r.data.params == {"model.optimizer.lr": str(t.params["model.optimizer.lr"])}
        assert {k: r.data.tags[k] for k in ("study", "trial", "seed", "state")} == {
            "study": "solo", "trial": str(t.number), "seed": str(study.seed + t.number),
            "state": t.state.name}
        assert r.info.status == ("FINISHED" if t.state == TrialState.COMPLETE else "KILLED")
        assert r.data.metrics["best/val/digit_acc"] == pytest.approx(t.value if t.value is not None
                                                                     else t.user_attrs["best_val/digit_acc"])
        history = client.get_metric_history(r.info.run_id, "val/digit_acc")
        assert len(history) == t.user_attrs["epochs"]  # per epoch, under the project's metric names
    for solo, member in zip(by_study["solo"], by_study["pop"], strict=True):
        assert set(member.data.metrics) == set(solo.data.metrics)  # a member logs what a solo trial logs
        assert member.info.status == solo.info.status and member.data.tags["state"] == solo.data.tags["state"]
    text = summary(ostudy, study.max_epochs, storage)
    assert f"curves: MLflow experiment {experiment(ostudy)} at {uri}" in text


@pytest.mark.slow
def test_a_tracking_server_that_dies_costs_a_warning_per_trial_not_the_trial(mlflow_server, tiny_data,
                                                                             tmp_path, monkeypatch, capfd):
    from mlflow.tracking import MlflowClient

    proc, uri = mlflow_server
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    over = ["trainer.max_epochs=1", "logger=mlflow", f"logger.mlflow.tracking_uri={uri}"]
    study, ostudy = run_study(tmp_path, tiny_data, *over, lrs=LRS[:1], storage=storage)  # it answers
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment(ostudy)).experiment_id])
    assert [r.info.run_name for r in runs] == ["trial_0000"]
    stop(proc)  # it dies mid-study: the same process, config loaded once, goes on with the next trials
    capfd.readouterr()
    start = time.monotonic()
    for lr in LRS[1:]:
        ostudy.enqueue_trial({"model.optimizer.lr": lr})
    workers.work(dataclasses.replace(study, n_trials=len(LRS)), ostudy)
    # one epoch each: the pruner is not asked at a trial's last epoch, so all three complete
    assert [t.state for t in ostudy.get_trials()] == [TrialState.COMPLETE] * 3
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning: MLflow")]
    assert len(warnings) == 2, warnings  # one line per trial
    assert all("the study goes on without it" in w for w in warnings)
    assert time.monotonic() - start < 120


@pytest.mark.slow
def test_two_studies_of_one_name_in_two_storages_keep_their_mlflow_runs_apart(tiny_data, tmp_path,
                                                                             monkeypatch):
    from mlflow.tracking import MlflowClient

    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ostudies = [run_study(tmp_path, tiny_data, "trainer.max_epochs=1", "logger=mlflow",
                          f"logger.mlflow.tracking_uri={uri}", lrs=LRS[:1],
                          storage=f"sqlite:///{tmp_path / f'{where}.db'}")[1] for where in ("a", "b")]
    client = MlflowClient(uri)
    names = [experiment(o) for o in ostudies]
    assert len(set(names)) == 2 and all(n.startswith("lr-") for n in names)
    for name in names:  # each its own trial_0000, not two runs of one name in one experiment
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert [r.info.run_name for r in runs] == ["trial_0000"]


@pytest.mark.slow
def test_a_killed_workers_mlflow_run_is_ended_failed_when_its_trial_is_reaped(tiny_data, tmp_path):
    from mlflow.tracking import MlflowClient

    pytest.importorskip("mlflow")
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [sys.executable, str(ROOT / "studies" / "lr.py"), "--no-progress", "--storage", storage,
            "--n-trials", "1", "--pruner", "none", *tiny_for(tiny_data, 30), "callbacks.early_stopping=null",
            "logger=mlflow", f"logger.mlflow.tracking_uri={uri}"]
    worker = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client, deadline = MlflowClient(uri), time.monotonic() + 300
    while not (tmp_path / "mlflow.db").exists() or not client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "metrics.`val/digit_acc` > 0"):
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()[1][-2000:]
        time.sleep(0.5)  # until the trial has logged an epoch
    worker.kill()
    worker.wait()
    ours = client.get_experiment_by_name(experiment(optuna.load_study(study_name="lr", storage=storage)))
    (killed,) = client.search_runs([ours.experiment_id])
    assert killed.info.status == "RUNNING"  # MLflow has no heartbeat: nobody else would end it

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = {r.info.run_id: r for r in client.search_runs([ours.experiment_id])}
    assert runs[killed.info.run_id].info.status == "FAILED"
    assert runs[killed.info.run_id].data.tags["state"] == "FAIL"
    (rerun,) = [r for r in runs.values() if r.info.run_id != killed.info.run_id]
    assert rerun.info.status == "FINISHED" and rerun.data.tags["state"] == "COMPLETE"


@pytest.mark.slow
def test_a_trial_whose_heartbeat_stopped_has_its_mlflow_run_ended_and_is_retried(tmp_path, monkeypatch):
    """A worker on another machine died: Optuna's heartbeat, not the local reaper, fails it. Its run
    is ended in the tracking store of this machine's environment, the one the trial names."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("hb-0a1b2c3d"), tags={"trial": "0"})
    ostudy = optuna.create_study(study_name="hb", storage=open_storage(f"sqlite:///{tmp_path / 'o.db'}", 1))
    trial = ostudy.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)  # a trial with no parameters yet is not re-run
    trial.set_user_attr("owner", {"host": "another-machine", "pid": 1, "started": None})
    trial.set_user_attr(TRACKING, {"mlflow": uri})
    trial.set_user_attr("output_dir", str(tmp_path / "hb-0a1b2c3d" / "trial_0000"))
    ostudy._storage.record_heartbeat(trial._trial_id)
    time.sleep(4.5)  # past the grace period (3 heartbeats) with no beat
    reap(ostudy)
    assert [t.state for t in ostudy.get_trials()] == [TrialState.FAIL, TrialState.WAITING]
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "FAILED" and ended.data.tags["state"] == "FAIL"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(url: str, folder: Path, name: str) -> str:
    """The page as headless Chromium renders it: a screenshot saved beside, the DOM returned."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync",
             f"--user-data-dir={folder / ('chrome-' + name)}", "--virtual-time-budget=20000",
             "--window-size=1400,1000"]
    shot = folder / f"{name}.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    assert shot.exists() and shot.stat().st_size > 5000, f"no screenshot of {url}"
    return subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_mlflow_and_tensorboard_pages_show_the_trials_in_chromium(mlflow_server, tiny_data, tmp_path,
                                                                   monkeypatch):
    from mlflow.tracking import MlflowClient

    _, uri = mlflow_server
    monkeypatch.chdir(tmp_path)
    _, ostudy = run_study(tmp_path, tiny_data, "logger=[csv,tensorboard,mlflow]",
                          f"logger.mlflow.tracking_uri={uri}", name="seen", lrs=LRS[:2])
    found = MlflowClient(uri).get_experiment_by_name(experiment(ostudy))
    dom = render(f"{uri}/#/experiments/{found.experiment_id}/runs", tmp_path, "mlflow")
    assert "trial_0000" in dom and "trial_0001" in dom, dom[-2000:]

    port = free_port()
    board = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorboard"), "--logdir",
         str(Path(ostudy.user_attrs["output_root"]).resolve()), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/data/runs", timeout=2) as r:
                    if b"trial_0001" in r.read():
                        break
            except OSError:
                pass
            time.sleep(0.5)
        dom = render(f"{base}/#timeseries", tmp_path, "tensorboard")
        assert "trial_0000" in dom and "trial_0001" in dom, dom[-2000:]
    finally:
        os.killpg(board.pid, 15)
        board.wait(timeout=30)


# ---- passwords stay out of shared places ----

class Answers:
    """An HTTP server on a loopback port that answers MLflow's health check and nothing else (so
    a study's MLflow logger starts, then fails politely); it keeps the request lines it saw."""

    def __init__(self) -> None:
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                seen.append(self.requestline)
                self.send_response(200 if self.path.startswith("/health") else 404)
                self.end_headers()
                self.wfile.write(b"OK")

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def everything_under(root: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_a_password_reaches_no_shared_place(tiny_data, tmp_path, monkeypatch, capfd):
    """A password in MLFLOW_TRACKING_URI and one in a storage URL, each planted where a URL
    enters: neither is in any output, file (config.yaml, hparams.yaml, the storage itself) or
    stored record, though the MLflow logger still reaches its server."""
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    server, secrets = Answers(), [f"pw-{uuid}" for uuid in ("mlflow-3f9a", "storage-81c2", "summary-5d0e")]
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://bob:{secrets[0]}@127.0.0.1:{server.port}")
        storage = f"sqlite:///{tmp_path / 'optuna.db'}"
        argv = ["--storage", storage, "--n-trials", "1", "--no-progress", *tiny_for(tiny_data, 1),
                "logger=[csv,mlflow]"]
        assert cli.main("lr", "lr", argv=argv) == 0
        first = capfd.readouterr()
        pg = f"postgresql+psycopg://u:{secrets[1]}@127.0.0.1:1/db"
        assert cli.main("lr", "lr", argv=[*argv[2:], "--storage", pg]) == 2  # cannot open: one line
        ostudy = optuna.load_study(study_name="lr", storage=storage)
        text = summary(ostudy, 1, f"postgresql+psycopg://u:{secrets[2]}@127.0.0.1/db")
    finally:
        server.close()
    out, err = capfd.readouterr()
    out, err = first.out + out, first.err + err
    assert any(line.startswith("GET /health") for line in server.seen)  # the logger did reach it
    assert "curves: MLflow experiment lr-" in text and f"at http://bob@127.0.0.1:{server.port}" in text
    assert "storage postgresql+psycopg://u:***@127.0.0.1:1/db" in out and "study lr: 1 trials" in out
    written = everything_under(tmp_path)
    assert list(tmp_path.rglob("config.yaml")) and list(tmp_path.rglob("hparams.yaml"))  # what is searched
    for secret in secrets:
        for where, place in (("output", out + err + text), ("request lines", "\n".join(server.seen))):
            assert secret not in place, (secret, where)
        assert secret.encode() not in written, secret
        assert all(secret not in str(v) for t in ostudy.trials for v in t.user_attrs.values())


def test_stored_places_in_a_curves_line_are_quoted():
    """A stored folder name with a space and a `;` stays one argument of the printed command."""
    import shlex

    from mhtrain.tracking import curves

    place = "/tmp/a b;rm -rf x/lr-1a2b3c4d/trial_0000"
    (line,) = curves([({"tensorboard": place}, None)])
    command = line.removeprefix("curves: ").split("  (or")[0]
    assert shlex.split(command)[2] == "/tmp/a b;rm -rf x/lr-1a2b3c4d"
