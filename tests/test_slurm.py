"""A study as a SLURM job array, against a real SLURM (.ci/slurm-up) and PostgreSQL: the budget
holds across array tasks, a task cancelled, requeued or out of time loses nothing, and the
database password reaches no job script, command line or job environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from mhtrain.study import cli, runner, study_config
from mhtrain.study.records import FAIL_REASON, OVER_BUDGET
from mhtrain.study.slurm import glue, job_name, job_script
from tests.conftest import tiny_for
from tests.test_workers import assert_intact, study_args, trials

POSTGRES = os.environ.get("MHTRAIN_TEST_POSTGRES")
needs_postgres = pytest.mark.skipif(not POSTGRES,
                                    reason="set MHTRAIN_TEST_POSTGRES (.ci/run starts a server)")


def slurm_answers() -> bool:
    if shutil.which("scontrol") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return ping.returncode == 0 and "UP" in ping.stdout


needs_slurm = pytest.mark.skipif(not slurm_answers(),
                                 reason="no SLURM answers here (.ci/slurm-up starts one)")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture
def name() -> str:
    return f"s_{uuid.uuid4().hex[:8]}"  # PostgreSQL is shared by the tests


@pytest.fixture
def jobs() -> Iterator[list[str]]:
    """Job ids a test submitted: cancelled at its end, whatever happened."""
    submitted: list[str] = []
    yield submitted
    for job in submitted:
        subprocess.run(["scancel", job], capture_output=True)


def submit(tiny_data: Path, name: str, n: int, epochs: int, tasks: int, cwd: Path, *extra: str,
           env: dict | None = None) -> tuple[str, str]:
    """Submit the study as an array through the command line; returns (job id, its output)."""
    done = subprocess.run([*study_args(tiny_data, POSTGRES, name, n, epochs), "--slurm", str(tasks), *extra],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    job = done.stdout.split("submitted SLURM job ", 1)[1].split(":", 1)[0]
    return job, done.stdout


def queued(job: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True, text=True)
    return out.stdout.split("\n") if out.stdout.strip() else []


def wait_gone(job: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while queued(job):
        assert time.monotonic() < deadline, f"job {job} still queued: {queued(job)}"
        time.sleep(1)


def running_in(name: str, task: str) -> list:
    return [t for t in trials(POSTGRES, name)
            if t.state == TrialState.RUNNING and (t.user_attrs.get("owner") or {}).get("slurm") == task]


def wait_running(name: str, tasks: list[str], timeout: float = 240) -> None:
    """Block until each task has a trial RUNNING, a second into its epochs."""
    deadline = time.monotonic() + timeout
    while not all(running_in(name, task) for task in tasks):
        assert time.monotonic() < deadline, [(t.number, t.state, t.user_attrs.get("owner"))
                                             for t in trials(POSTGRES, name)]
        time.sleep(0.3)
    time.sleep(1.0)


def task_environ(name: str, timeout: float = 240) -> str:
    """The environment of a task running a trial, as the node gave it (this is one machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in trials(POSTGRES, name):
            if t.state == TrialState.RUNNING and "owner" in t.user_attrs:
                try:
                    pid = t.user_attrs["owner"]["pid"]
                    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
                except OSError:
                    continue  # it ended meanwhile
        time.sleep(0.2)
    raise AssertionError("no task ran a trial")


def assert_cut_and_rerun(ts: list, cut: list[int]) -> None:
    """Trials a stopped task held ended FAIL with their reason and were enqueued again."""
    for number in cut:
        t = ts[number]
        assert t.state == TrialState.FAIL, (number, t.state)
        assert str(t.user_attrs.get(FAIL_REASON, "")).startswith("interrupted"), t.user_attrs
        again = [r for r in ts if r.user_attrs.get("retry_of") == number]
        asked = again and (again[0].params or again[0].system_attrs.get("fixed_params"))
        assert asked == t.params, number  # the same parameters, or still waiting to be asked


# --- the submission's checks: in-process, no SLURM needed ---------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = cli.main("lr", "test", argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("storage", ["sqlite:///runs/x.db", "runs/x.journal"])
def test_a_file_storage_is_refused_for_an_array(storage, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["--storage", storage, "--slurm", "3", *tiny], capsys)
    assert code == 2 and err.count("\n") == 1 and "nodes cannot share" in err, err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_a_password_in_the_url_is_refused(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = "postgresql+psycopg://mhtrain:s3cret@127.0.0.1:1/mhtrain"
    code, _, err = run_cli(["--storage", url, "--slurm", "2", "--dry-run", *tiny], capsys)
    assert code == 2 and err.count("\n") == 1 and "~/.pgpass" in err and "s3cret" not in err, err


def test_slurm_on_a_machine_without_slurm_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine with no sbatch on it
    url = "postgresql+psycopg://mhtrain@127.0.0.1:1/mhtrain"
    code, _, err = run_cli(["--storage", url, "--slurm", "2", *tiny], capsys)
    assert code == 2 and err.count("\n") == 1 and "SLURM is not installed here" in err, err


HOSTILE_NAME = "lr\ntouch PWNED; exit 0 #"  # a line of the job script, were it written raw


@pytest.mark.parametrize("bad", [HOSTILE_NAME, "lr;touch PWNED", "a b", "../up", "x" * 101, "lr$(id)"])
def test_a_study_name_is_a_name_wherever_it_enters(bad, tiny, tmp_path, monkeypatch, capsys):
    """It becomes a folder, a job name and a line of the job script: checked once where it enters,
    one line, nothing written."""
    from mhtrain.study.__main__ import main as study_main

    monkeypatch.chdir(tmp_path)
    url = "postgresql+psycopg://mhtrain@127.0.0.1:1/mhtrain"
    code, _, err = run_cli(["--study-name", bad, "--storage", url, "--slurm", "2", "--dry-run", *tiny],
                           capsys)
    assert code == 2 and err.count("\n") == 1 and "a study name is 1 to 100 letters" in err, err
    assert study_main(["export", bad, "--storage", "sqlite:///x.db"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a study name is" in err, err
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "runs").exists()


def test_the_job_script_quotes_a_name_anyway(tmp_path):
    """A name that reached the script some other way stays inside its comment line: the script,
    run by bash, runs only its command."""
    script = job_script(["true"], 2, HOSTILE_NAME, "postgresql+psycopg://u:s3cret@db/x", tmp_path / "w d")
    (tmp_path / "job.sh").write_text(script)
    done = subprocess.run(["bash", "job.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "PWNED").exists(), "the study name ran as a command"
    assert "s3cret" not in script and job_name(HOSTILE_NAME) == "mhtrain-lr_touch_PWNED__exit_0__"


def test_a_port_that_is_not_a_number_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = "postgresql+psycopg://mhtrain:s3cret@127.0.0.1:5x/mhtrain"
    code, _, err = run_cli(["--storage", url, "--slurm", "2", "--dry-run", *tiny], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a database URL" in err and "s3cret" not in err, err


def test_slurm_args_take_a_lone_option():
    assert glue(["--slurm-args", "--time=5", "--slurm", "2"]) == ["--slurm-args=--time=5", "--slurm", "2"]


@needs_postgres
def test_dry_run_submits_and_creates_nothing(tiny, tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    before = queued("") if slurm_answers() else []
    code, out, err = run_cli(["--storage", POSTGRES, "--study-name", name, "--n-trials", "4",
                              "--slurm", "3", "--slurm-args", "--time=5", "--dry-run", *tiny], capsys)
    assert code == 0, err
    assert "nothing submitted" in out and "sbatch --parsable --time=5 <<'EOF'" in out
    assert "#SBATCH --array=0-2" in out and f"--study-name {name} --n-trials 4" in out
    assert trials(POSTGRES, name) == [] and not (tmp_path / "runs").exists()
    assert (queued("") if slurm_answers() else []) == before


# --- real arrays ---------------------------------------------------------------------------------


def pgpass_env(tmp_path: Path) -> tuple[dict, list[str]]:
    """The submitting environment: a password in PGPASSWORD and in a PGPASSFILE (any password
    works under CI's trust auth); returns it and the secrets that must show up nowhere."""
    secrets = [f"pw-env-{uuid.uuid4().hex[:8]}", f"pw-file-{uuid.uuid4().hex[:8]}"]
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:*:{secrets[1]}\n")
    pgpass.chmod(0o600)
    return {**os.environ, "PGPASSWORD": secrets[0], "PGPASSFILE": str(pgpass)}, secrets


@pytest.mark.slow
@needs_slurm
@needs_postgres
def test_an_array_of_three_reaches_exactly_n(tiny_data, tmp_path, name, jobs):
    env, secrets = pgpass_env(tmp_path)
    job, out = submit(tiny_data, name, 6, 2, 3, tmp_path, env=env)
    jobs.append(job)
    assert f"squeue -j {job}" in out and f"scancel {job}" in out and "PGPASSWORD is not passed" in out
    seen = subprocess.run(["scontrol", "show", "job", "-dd", job], capture_output=True, text=True).stdout
    seen += subprocess.run(["scontrol", "write", "batch_script", f"{job}_0", "-"],
                           capture_output=True, text=True).stdout
    environ = task_environ(name)
    assert "PGPASSWORD" not in environ and f"PGPASSFILE={env['PGPASSFILE']}" in environ
    seen += environ
    assert "--array=0-2" in seen and not [s for s in secrets if s in seen]
    wait_gone(job)
    everything = trials(POSTGRES, name)
    ts = [t for t in everything if not t.user_attrs.get(OVER_BUDGET)]
    assert_intact(ts, 6)
    tasks = {t.user_attrs["owner"]["slurm"] for t in ts}
    assert tasks <= {f"{job}_{k}" for k in range(3)} and len(tasks) >= 2, tasks
    logs = sorted((tmp_path / "runs" / "slurm").glob(f"*-{job}_*.out"))
    assert len(logs) == 3 and "Traceback" not in "".join(p.read_text() for p in logs)
    assert any("ran on:" in p.read_text() for p in logs)


@pytest.mark.slow
@needs_slurm
@needs_postgres
def test_scancel_and_requeue_mid_trial_lose_nothing(tiny_data, tmp_path, name, jobs):
    job, _ = submit(tiny_data, name, 6, 6, 3, tmp_path)
    jobs.append(job)
    wait_running(name, [f"{job}_0", f"{job}_1"])
    before = {t.number: t for t in trials(POSTGRES, name)}
    cut = [t.number for task in ("0", "1") for t in running_in(name, f"{job}_{task}")]
    subprocess.run(["scancel", f"{job}_0"], check=True)
    subprocess.run(["scontrol", "requeue", f"{job}_1"], check=True)
    wait_gone(job)
    ts = trials(POSTGRES, name)
    assert_intact([t for t in ts if not t.user_attrs.get(OVER_BUDGET)], 6)
    assert_cut_and_rerun(ts, cut)
    for number, t in before.items():  # every trial finished before the signals is untouched
        if t.state in FINISHED:
            assert ts[number].value == t.value and ts[number].intermediate_values == t.intermediate_values
    log = next((tmp_path / "runs" / "slurm").glob(f"*-{job}_1.out")).read_text()
    assert log.count(f"{name}: budget 6 trials") >= 2  # the requeued task started again, and rejoined


@pytest.mark.slow
@needs_slurm
@needs_postgres
def test_a_task_out_of_time_mid_trial_loses_nothing(tiny_data, tmp_path, name, jobs):
    """SLURM's shortest limit is a minute: the one task trains trials until it runs out. Its trial
    ends FAIL with its reason (SIGTERM), or stays RUNNING if KillWait ran out first (SIGKILL) and
    is reaped; either way the study, run on, re-runs it and ends at exactly its budget."""
    job, _ = submit(tiny_data, name, 200, 4, 1, tmp_path, "--slurm-args", "--time=1")
    jobs.append(job)
    wait_gone(job, timeout=240)
    ts = trials(POSTGRES, name)
    log = next((tmp_path / "runs" / "slurm").glob(f"*-{job}_0.out")).read_text()
    left = [t for t in ts if t.state in (TrialState.FAIL, TrialState.RUNNING)
            and not t.user_attrs.get(OVER_BUDGET)]
    assert len(left) == 1 and "DUE TO TIME LIMIT" in log, ([(t.number, t.state) for t in ts], log[-2000:])
    (cut,) = left
    if cut.state == TrialState.FAIL:  # stopped in time: failed with its reason, enqueued again
        assert_cut_and_rerun(ts, [cut.number])
        assert f"trial {cut.number} was cut short by SLURM" in log
    done = sum(t.state in FINISHED for t in ts)
    assert 0 < done < 200

    study = study_config.load("lr", name=name, n_trials=done + 1, pruner="none",  # its retry is the last
                       extra_overrides=[*tiny_for(tiny_data, 4), "callbacks.early_stopping=null"])
    runner.run(study, POSTGRES, progress=False, heartbeat=1)  # the same study, run on: here
    ts = trials(POSTGRES, name)
    assert_intact([t for t in ts if not t.user_attrs.get(OVER_BUDGET)], done + 1)
    assert ts[cut.number].state == TrialState.FAIL
    assert ts[-1].params == cut.params and ts[-1].state in FINISHED  # re-run, same parameters
