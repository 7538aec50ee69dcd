"""Processes that start together on a new storage: every one of them opens it and the study,
on SQLite, Journal files and PostgreSQL (optuna/optuna#1092: both create the schema, one fails)."""

import multiprocessing as mp
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mhtrain.study.storage import open_storage
from tests.test_workers import POSTGRES, STORAGES, study_args, trials

pytestmark = pytest.mark.slow  # real processes started at the same instant

PROCESSES = 4
ROUNDS = 6  # the race hit 2 of 8 four-process starts of studies/lr.py, and half of these rounds


def fresh_postgres(tag: str) -> str:
    """A database of its own on the test server: the race is in creating a schema."""
    import sqlalchemy

    name = f"race_{tag}"
    engine = sqlalchemy.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return POSTGRES.rsplit("/", 1)[0] + f"/{name}"


def new_storage(kind: str, folder: Path, tag: str) -> str:
    return {"sqlite": lambda: f"sqlite:///{folder / f'{tag}.db'}",
            "journal": lambda: str(folder / f"{tag}.journal"),
            "postgres": lambda: fresh_postgres(tag)}[kind]()


def open_together(barrier, urls: list[str], results) -> None:
    """One process: open each new storage and the study in it the moment all others do."""
    from mhtrain.study import opening, study_config

    study = study_config.load("lr", n_trials=3, population=1)
    for url in urls:
        barrier.wait()
        try:
            opening.open_study(study, url, reproducible=False)
            results.put(None)
        except Exception as e:  # noqa: BLE001 - reported to the test, which names it
            results.put(f"{url}: {type(e).__name__}: {e}")


def test_processes_opening_a_new_storage_together_all_succeed(tmp_path: Path) -> None:
    """Every storage kind here (PostgreSQL where the tests have one), by the same four processes:
    importing torch in each is most of this test's cost."""
    kinds = ["sqlite", "journal", *(["postgres"] * bool(POSTGRES))]
    urls = [new_storage(kind, tmp_path, f"{uuid.uuid4().hex[:8]}_{r}")
            for kind in kinds for r in range(ROUNDS)]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=open_together, args=(barrier, urls, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in range(PROCESSES * ROUNDS)]
    for p in procs:
        p.join(timeout=60)
    assert [o for o in outcomes if o] == []
    for url in urls:  # one study per storage, ready: its config stored
        summaries = optuna.get_all_study_summaries(open_storage(url))
        assert [s.study_name for s in summaries] == ["lr"]
        assert "config" in summaries[0].user_attrs


@pytest.mark.parametrize("kind", STORAGES)
def test_studies_started_together_on_a_new_storage_all_finish(kind: str, tmp_path: Path,
                                                             tiny_data: Path) -> None:
    storage, name, n = new_storage(kind, tmp_path, uuid.uuid4().hex[:8]), "together", 6
    args = study_args(tiny_data, storage, name, n, 1)
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(PROCESSES)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * PROCESSES, outs
    ts = trials(storage, name)
    ran = [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(ran) == n, [(t.number, t.state) for t in ts]
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    lrs = [t.params["model.optimizer.lr"] for t in ran]
    assert len(set(lrs)) == n, lrs  # four samplers, four seeds: no value tried twice
