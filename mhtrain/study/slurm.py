"""A study as a SLURM job array: the submitting command checks everything and creates the study
once; each array task then runs the same study command as one worker (or `--workers N`) against
the shared storage, so a task is a worker like any other: stopped, it fails its running trial,
which another task re-runs; requeued, it rejoins.

SLURM stops a task with SIGTERM (scancel, a time limit, `scontrol requeue`, preemption), then
SIGKILL after KillWait. The study alone handles those signals (`interrupt`); the Trainer of a
trial is kept out of it (`engines.StopOnRequest`), and Lightning's auto-requeue never arms: the
job asks for no early signal and starts one process per task, so Lightning never sees SLURM.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna

from mhtrain import ConfigError, program
from mhtrain.study.opening import open_study, prepare
from mhtrain.study.records import shown, trial_attr
from mhtrain.study.warmstart import load_source
from mhtrain.urls import masked, scrubbed

LOG_DIR = Path("runs/slurm")
OURS = ("--array", "-a", "--wrap", "--parsable")  # set by the submission itself
PASSWORD_HINT = "the tasks read the password from ~/.pgpass or a PGPASSFILE, never from the URL or PGPASSWORD"
NOT_PASSED = {"slurm", "slurm_args", "dry_run", "warm_start", "allow_changes", "no_progress", "help",
              "study_name", "n_trials", "overrides"}  # handled by the submission, or set for every task


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "on a SLURM cluster",
        "Submit the study as a job array: each task is one worker (its own --workers, its own GPU\n"
        "where the partition has them) on one shared --storage (PostgreSQL; SQLite and Journal\n"
        "files are refused). The study is created first; the command prints the job id and how\n"
        "to watch and cancel it. A task stopped by scancel, its time limit or a requeue fails its\n"
        "running trial, which another task re-runs.")
    g.add_argument("--slurm", type=int, metavar="N", help="submit N array tasks, e.g. --slurm 8")
    g.add_argument("--slurm-args", default="", metavar='"ARGS"',
                   help='sbatch options for every task, e.g. "--partition=gpu --gres=gpu:1 --time=4:00:00"')
    g.add_argument("--dry-run", action="store_true",
                   help="with --slurm: print the sbatch command and the job script; submit nothing, "
                        "create nothing")


def glue(argv: Sequence[str] | None) -> list[str]:
    """`--slurm-args "--time=5"` as `--slurm-args=--time=5`: argparse takes a lone value that
    starts with `-` for an option of its own."""
    rest, out = list(sys.argv[1:] if argv is None else argv), []
    while rest:
        arg = rest.pop(0)
        out.append(f"{arg}={rest.pop(0)}" if arg == "--slurm-args" and rest else arg)
    return out


def placement() -> dict[str, Any]:
    """Where a trial runs under SLURM, recorded beside its owner: the job and array task
    (`1234_5`; a plain job's id otherwise) and how often it was requeued. Empty elsewhere."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    ident = f"{job}_{task}" if job and task else os.environ.get("SLURM_JOB_ID")
    if not ident:
        return {}
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    return {"slurm": ident, **({"requeued": restarts} if restarts else {})}


def where(ostudy: optuna.Study, trials: Iterable[optuna.trial.FrozenTrial]) -> list[str]:
    """Summary lines: how many trials ran on each host and SLURM task (nothing on one host), from
    each trial's checked owner record."""
    per_host: dict[str, Counter] = defaultdict(Counter)
    for t in trials:
        who = trial_attr(ostudy, t, "owner", fatal=False)
        if who is not None:
            per_host[shown(who.host, 80)][who.slurm and shown(who.slurm, 80)] += 1
    if len(per_host) < 2 and not any(None not in tasks or len(tasks) > 1 for tasks in per_host.values()):
        return []
    lines = ["ran on:"]
    for host, tasks in sorted(per_host.items()):
        parts = [f"{task or 'outside SLURM'}: {n}" for task, n in sorted(tasks.items(), key=str)]
        lines.append(f"  {host}: {sum(tasks.values())} trial(s) ({', '.join(parts)})")
    return lines


def refuse_unshared(storage: str) -> None:
    """Nodes share a database server, not a file: SQLite locks and Journal files break on network
    filesystems (optuna#1457, #5138), and a node-local one is another study on every node."""
    if storage.startswith("sqlite") or storage.endswith(".journal"):
        raise ConfigError(f"--slurm: --storage {storage} is a file the nodes cannot share; use a "
                          "database server every node reaches, e.g. postgresql+psycopg://USER@DBHOST/DB")
    url = parsed_url(storage)
    if url.password is not None or "password" in url.query:
        raise ConfigError(f"--slurm: --storage names a password, which the job script, every task's "
                          f"command line and the scheduler would show; leave it out: {PASSWORD_HINT}")


def parsed_url(storage: str) -> Any:
    """The storage URL as SQLAlchemy reads it; one line (its password masked) if it cannot."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(storage)
        url.port  # noqa: B018 - a port such as `5x` fails only when read
    except (ArgumentError, ValueError) as e:
        why = scrubbed(" ".join(str(e).split()))[:200]
        raise ConfigError(f"--storage {masked(storage)}: not a database URL ({why}); "
                          "e.g. postgresql+psycopg://USER@DBHOST:5432/DB") from None
    return url


def answers(storage: str) -> None:
    """The storage answers, with the credentials the tasks will have; reads, writes nothing."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(storage)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any driver error becomes one line
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"--slurm: storage {masked(storage)} does not answer "
                          f"({scrubbed(reason)[:300]}); {PASSWORD_HINT}") from None


def task_command(p: argparse.ArgumentParser, args: argparse.Namespace, config: str, name: str,
                 n_trials: int) -> list[str]:
    """What every array task runs: this study command without the submission options, with the
    study's resolved name and budget, no progress bar (a log file is not a terminal)."""
    cmd = [sys.executable, "-m", "mhtrain.study", "run", config, "--no-progress",
           "--study-name", name, "--n-trials", str(n_trials)]
    for action in p._actions:
        value = getattr(args, action.dest, None)
        if action.dest in NOT_PASSED or not action.option_strings or value in (None, action.default):
            continue
        flag = max(action.option_strings, key=len)
        cmd += [flag] if value is True else [flag, str(value)]
    return [*cmd, *args.overrides]


def job_name(study: str) -> str:
    return "mhtrain-" + "".join(c if c.isascii() and c.isalnum() or c in "-_." else "_" for c in study)


def job_script(command: list[str], n: int, name: str, storage: str, workdir: Path) -> str:
    """The array's script. The study name is checked where it enters (`records.study_name`); here
    it is quoted anyway, as every value that becomes part of a line is."""
    return "\n".join([
        "#!/bin/bash",
        f"# study {shown(name, 120)} on {shown(masked(storage), 200)}: {n} array task(s), each one worker "
        "of the same study.",
        "# A task stopped by scancel, its time limit or a requeue fails its running trial (SIGTERM),",
        "# which another task re-runs; a requeued task rejoins the study.",
        f"#SBATCH --job-name={job_name(name)}",
        f"#SBATCH --array=0-{n - 1}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --chdir={shlex.quote(str(workdir))}",
        f"#SBATCH --output={shlex.quote(str(workdir / LOG_DIR))}/%x-%A_%a.out",
        "# torch takes one thread per CPU SLURM gave this task, not one per CPU of the node",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_ON_NODE:-1}}"',
        f"exec {shlex.join(command)}",
        ""])


def sbatch_args(text: str) -> list[str]:
    try:
        given = shlex.split(text)
    except ValueError as e:
        raise ConfigError(f"--slurm-args {text!r}: {e}") from None
    for arg in given:
        if arg.split("=", 1)[0] in OURS or (arg.startswith("-a") and not arg.startswith("--")):
            raise ConfigError(f"--slurm-args: {arg} is set by --slurm itself (--slurm N is the array)")
    return given


def submit(p: argparse.ArgumentParser, args: argparse.Namespace, config: str, study: Any) -> int:
    """Check, create the study once, submit the array (or print it with --dry-run)."""
    if args.slurm is None:
        raise ConfigError("--dry-run shows what --slurm N would submit; add --slurm N")
    if args.slurm < 1:
        raise ConfigError(f"--slurm {args.slurm}: must be >= 1 (the number of array tasks)")
    refuse_unshared(args.storage)
    given = sbatch_args(args.slurm_args)
    if not args.dry_run and shutil.which("sbatch") is None:
        raise ConfigError("--slurm: SLURM is not installed here (no sbatch); submit from a machine of "
                          "the cluster, or add --dry-run to see the job")
    if os.environ.pop("PGPASSWORD", None) is not None:  # never into the job's environment
        print("PGPASSWORD is not passed to the job (the scheduler would show it); "
              "the tasks read ~/.pgpass or PGPASSFILE", flush=True)
    answers(args.storage)
    workdir = Path.cwd()
    command = ["sbatch", "--parsable", *given]
    script = job_script(task_command(p, args, config, study.name, study.n_trials), args.slurm,
                        study.name, args.storage, workdir)
    if args.dry_run:
        print(f"dry run: nothing submitted, nothing created. It would run, in {workdir}:")
        print(f"{shlex.join(command)} <<'EOF'\n{script}EOF")
        return 0
    create(args, study)
    (workdir / LOG_DIR).mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, input=script, text=True, capture_output=True)
    if done.returncode != 0:
        error = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise ConfigError(f"sbatch refused the job: {error}")
    job = done.stdout.strip().split(";")[0]
    log = workdir / LOG_DIR / f"{job_name(study.name)}-{job}_<task>.out"
    print(f"submitted SLURM job {job}: {args.slurm} array task(s) of study {study.name} "
          f"(budget {study.n_trials} trials), logs {log}")
    print(f"watch:  squeue -j {job}   and   {program()} -m mhtrain.study dashboard --storage {args.storage}")
    print(f"cancel: scancel {job}   (running trials end FAIL; finished ones stay; the same "
          "command submits again for the rest)")
    return 0


def create(args: argparse.Namespace, study: Any) -> None:
    """Create (or resume) the study before any task starts, with its warm start and artifact
    store set once, so the tasks only ever load it."""
    ostudy = open_study(study, args.storage, args.heartbeat, reproducible=False,
                        allow_changes=args.allow_changes)
    warm = load_source(args.storage, args.warm_start, study.name) if args.warm_start else None
    prepare(ostudy, study, args.storage, warm)
