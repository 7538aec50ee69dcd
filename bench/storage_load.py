"""The load one storage holds: W worker processes run trials of a trivial objective (no training)
against one PostgreSQL study, directly and through Optuna's gRPC proxy, side by side.

    python bench/storage_load.py --storage postgresql+psycopg://USER@HOST/DB [--workers 8 32 64]

Each worker does what a study worker does to the storage per trial, with the training left out:
reap dead workers' trials, count the study against its budget, ask, record its owner, step back
if it was one too many, beat once, report 10 steps, tell. All start together; the study's budget
is 10 trials per worker. Per row: trials/s (budget / wall time from the start signal), p50 and
p99 of ask and tell, failures (exceptions a worker caught, first one quoted), lost trials (told
COMPLETE by a worker, not COMPLETE in the storage, or left RUNNING), duplicated ones (a number
told twice), and whether the study ended with exactly its budget of COMPLETE trials.

The proxy (`run_grpc_proxy_server`, experimental) is one process in front of the same database:
the workers hold no database connection of their own, and have no heartbeat (a worker that dies
there leaves its trial RUNNING for the local reaper only). grpcio comes with tensorboard.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import socket
import time
import uuid
from collections import Counter
from typing import Any

import optuna
from optuna.trial import TrialState

from mhtrain import quiet
from mhtrain.study.ledger import counts, n_done, owner, reap
from mhtrain.study.records import OVER_BUDGET
from mhtrain.study.storage import open_storage

STEPS = 10
PER_WORKER = 10
HEARTBEAT_S = 10


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"


def connect(target: str) -> optuna.storages.BaseStorage:
    if target.startswith("grpc://"):
        host, port = target.removeprefix("grpc://").rsplit(":", 1)
        return optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    return open_storage(target, HEARTBEAT_S)


def worker(target: str, name: str, budget: int, ready: Any, go: Any, results: Any, limit_s: float) -> None:
    """One worker: trials until the study holds its budget (or `limit_s` passes)."""
    quiet()
    out: dict[str, Any] = {"ask": [], "tell": [], "told": [], "failures": []}
    try:
        storage = connect(target)
        study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    except Exception as e:  # noqa: BLE001 - a worker that cannot connect is a failure, reported
        out["failures"].append(f"connect: {first_line(e)}")
        ready.put(1)
        results.put(out)
        return
    ready.put(1)
    go.wait()
    beats = isinstance(storage, optuna.storages.RDBStorage)
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            reap(study)
            state = counts(study)
            if n_done(state) >= budget:
                break
            if n_done(state) + state[TrialState.RUNNING] >= budget and not state[TrialState.WAITING]:
                time.sleep(0.05)  # the last trials are running elsewhere
                continue
            t0 = time.perf_counter()
            trial = study.ask()
            out["ask"].append(time.perf_counter() - t0)
            trial.set_user_attr("owner", owner())
            ahead = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            if sum(t.number <= trial.number for t in ahead) > budget:
                trial.set_user_attr(OVER_BUDGET, True)
                study.tell(trial, state=TrialState.FAIL)
                continue
            if beats:
                storage.record_heartbeat(trial._trial_id)
            x = trial.suggest_float("x", 0.0, 1.0)
            for step in range(STEPS):
                trial.report(x * step, step)
            t0 = time.perf_counter()
            study.tell(trial, x)
            out["tell"].append(time.perf_counter() - t0)
            out["told"].append(trial.number)
        except Exception as e:  # noqa: BLE001 - counted and shown, the worker goes on
            out["failures"].append(first_line(e))
            time.sleep(0.1)
    results.put(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_proxy(url: str, port: int) -> None:
    quiet()
    storage = optuna.storages.RDBStorage(url)  # the proxy's own database connection, no heartbeat
    optuna.storages.run_grpc_proxy_server(storage, host="127.0.0.1", port=port)


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the gRPC proxy did not listen on {port}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(url: str, workers: int, via_proxy: bool, limit_s: float) -> dict[str, Any]:
    """One row: W workers on a fresh study, directly or through a fresh proxy."""
    ctx = mp.get_context("spawn")
    name = f"load_{workers}_{'proxy' if via_proxy else 'direct'}_{uuid.uuid4().hex[:6]}"
    direct = open_storage(url, HEARTBEAT_S)
    optuna.create_study(study_name=name, storage=direct, direction="maximize")
    budget = PER_WORKER * workers
    server, target = None, url
    if via_proxy:
        port = free_port()
        server = ctx.Process(target=serve_proxy, args=(url, port), daemon=True)
        server.start()
        wait_port(port)
        target = f"grpc://127.0.0.1:{port}"
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=worker, args=(target, name, budget, ready, go, results, limit_s))
             for _ in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=600)
    start = time.perf_counter()
    go.set()
    outs = []
    for _ in procs:
        try:
            outs.append(results.get(timeout=limit_s + 120))
        except queue.Empty:
            break
    wall = time.perf_counter() - start
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    if server is not None:
        server.kill()
        server.join()
    trials = optuna.load_study(study_name=name, storage=direct).get_trials(deepcopy=False)
    optuna.delete_study(study_name=name, storage=direct)
    complete = {t.number for t in trials if t.state == TrialState.COMPLETE}
    told = Counter(n for o in outs for n in o["told"])
    failures = [f for o in outs for f in o["failures"]] + ["a worker never reported"] * (workers - len(outs))
    return {
        "storage": "gRPC proxy -> PostgreSQL" if via_proxy else "PostgreSQL",
        "workers": workers, "budget": budget,
        "trials/s": len(complete) / wall,
        "ask p50/p99 ms": (1e3 * percentile([a for o in outs for a in o["ask"]], 0.5),
                           1e3 * percentile([a for o in outs for a in o["ask"]], 0.99)),
        "tell p50/p99 ms": (1e3 * percentile([a for o in outs for a in o["tell"]], 0.5),
                            1e3 * percentile([a for o in outs for a in o["tell"]], 0.99)),
        "failures": failures,
        "lost": len(set(told) - complete) + sum(t.state == TrialState.RUNNING for t in trials),
        "duplicated": sum(n > 1 for n in told.values()) + len(trials) - len({t.number for t in trials}),
        "exact": len(complete) == budget,
        "wall": wall,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| storage | workers | trials | trials/s | ask p50 / p99 ms | tell p50 / p99 ms | failures "
             "| lost | duplicated | budget exact |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fails = r["failures"]
        shown = f"{len(fails)} ({Counter(fails).most_common(1)[0][0]})" if fails else "0"
        lines.append(f"| {r['storage']} | {r['workers']} | {r['budget']} | {r['trials/s']:.1f} "
                     f"| {r['ask p50/p99 ms'][0]:.0f} / {r['ask p50/p99 ms'][1]:.0f} "
                     f"| {r['tell p50/p99 ms'][0]:.0f} / {r['tell p50/p99 ms'][1]:.0f} | {shown} "
                     f"| {r['lost']} | {r['duplicated']} | {'yes' if r['exact'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default=os.environ.get("MHTRAIN_TEST_POSTGRES"),
                    help="a PostgreSQL URL without a password (default: MHTRAIN_TEST_POSTGRES)")
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--no-proxy", action="store_true", help="PostgreSQL directly only")
    ap.add_argument("--limit", type=float, default=600, help="seconds a row may run (default 600)")
    args = ap.parse_args()
    if not args.storage or not args.storage.startswith("postgresql"):
        ap.error("--storage postgresql+psycopg://… (or set MHTRAIN_TEST_POSTGRES)")
    quiet()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for workers in args.workers:
        for via_proxy in (False,) if args.no_proxy else (False, True):
            rows.append(run(args.storage, workers, via_proxy, args.limit))
            print(table(rows[-1:]).splitlines()[-1], f"({rows[-1]['wall']:.0f} s)", flush=True)
    print(f"\n{os.cpu_count()} CPU cores, PostgreSQL on the same machine\n")
    print(table(rows))


if __name__ == "__main__":
    main()
