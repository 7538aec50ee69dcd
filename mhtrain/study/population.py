"""The study side of a population: K trials of one study trained at once as one stacked model.

Each member is an ordinary Optuna trial: asked while the budget allows (finished + running across
all workers < n_trials; enqueued trials first), given its config by `trial_config`, reported after
every epoch, pruned by the study's pruner, and told COMPLETE or PRUNED with the records a solo
trial gets (`record`). Any exception fails every running member, then propagates.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from mhtrain import ConfigError
from mhtrain.population import Member
from mhtrain.population.fit import check_base, fit_population, member_from_config, vectorizable
from mhtrain.study import interrupt
from mhtrain.study.ledger import POLL_S, counts, n_done, reap, show
from mhtrain.study.objective import (
    OVER_BUDGET,
    ask,
    fail,
    over_budget,
    record,
    report,
    search_base,
    trial_config,
)
from mhtrain.study.space import StudyConfig
from mhtrain.study.storage import Heartbeat

# K that `population: auto` picks per device type. CPU: 1, as a 2-model vmap step measured slower
# than two plain steps on a 2-core CPU (bench/population.py prints the ratio on any machine);
# CUDA: 32, where the H100/H200 measurements put ~10x the samples/s of one model (128
# adds little). Re-measure with bench/population.py on the device before changing these.
AUTO_K = {"cpu": 1, "cuda": 32}


def resolve_k(study_population: int | str, device: torch.device | str | None = None) -> int:
    """The population size K: an integer as given, or `auto`'s measured default for `device`
    (default: CUDA if available, else the CPU)."""
    k = study_population
    if k != "auto":
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"population={k!r}: must be auto or an integer >= 1")
        return k
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return AUTO_K.get(device.type, 1)


def check_vectorizable(study: StudyConfig, k: int) -> None:
    """With k > 1, refuse (one line naming the key) a study whose trials cannot share a stack:
    a searched key that changes shapes or the loop, or a setting a population cannot honour."""
    if k <= 1:
        return
    if study.keep_checkpoints != "none":
        raise ConfigError(f"--keep-checkpoints {study.keep_checkpoints} keeps solo trials' weights; "
                          f"a population (population={k}) cannot: use --population 1")
    for p in study.search_space:
        if not vectorizable(p.key):
            raise ConfigError(f"search_space key {p.key} changes the model's shapes or the training "
                              f"loop, so trials cannot train stacked (population={k}); "
                              "use --population 1")
    check_base(search_base(study))


def population_size(study: StudyConfig, device: torch.device | str | None = None) -> int:
    """K for this study on this device: an explicit K > 1 that cannot work is refused; `auto`
    falls back to 1 with a one-line notice instead."""
    k = resolve_k(study.population, device)
    try:
        check_vectorizable(study, k)
    except ConfigError as e:
        if study.population != "auto":
            raise
        print(f"notice: population auto -> 1: {e}", file=sys.stderr)
        return 1
    return k


class TrialMembers:
    """A MemberSource backed by an Optuna study: members are trials asked from it."""

    def __init__(self, study: StudyConfig, ostudy: optuna.Study, base: Any, heartbeat: Heartbeat,
                 deadline: float | None, bar: tqdm | None) -> None:
        self.study, self.ostudy, self.base = study, ostudy, base
        self.heartbeat, self.deadline, self.bar = heartbeat, deadline, bar
        self.running: dict[int, optuna.Trial] = {}
        self.pruned: set[int] = set()
        self.cohort: dict[int, list[int]] = {}  # trial -> the trials training with it when it joined

    def room(self) -> bool:
        """Whether the budget allows one more trial now (as the solo loop counts it)."""
        state = counts(self.ostudy)
        done = n_done(state)
        return done + state[TrialState.RUNNING] < self.study.n_trials or state[TrialState.WAITING] > 0

    def next(self, free: int) -> list[Member]:
        members: list[Member] = []
        if free > 0:
            reap(self.ostudy)
        while len(members) < free and not interrupt.requested() and self.room() and (
                self.deadline is None or time.monotonic() < self.deadline):
            trial = ask(self.ostudy)
            if over_budget(self.ostudy, trial.number, self.study.n_trials):
                trial.set_user_attr(OVER_BUDGET, True)
                fail(self.ostudy, trial)
                break
            self.running[trial.number] = trial
            self.heartbeat.add([trial._trial_id])
            members.append(member_from_config(trial_config(self.study, trial), trial, self.base))
        for member in members:
            self.cohort[member.key.number] = sorted(self.running)
        return members

    def report(self, member: Member, epoch: int, metrics: dict[str, float]) -> bool:
        if report(member.key, metrics[self.study.metric], epoch):
            self.pruned.add(member.key.number)
            return False
        return True

    def finish(self, member: Member, result: dict[str, Any]) -> None:
        trial: optuna.Trial = member.key
        value = record(self.study, trial, result)
        # a member reproduces its solo run up to floating-point order: say with whom it ran
        trial.set_user_attr("population", {**result["population"],
                                           "cohort": self.cohort.pop(trial.number, [])})
        if trial.number in self.pruned:
            self.ostudy.tell(trial, state=TrialState.PRUNED)
        else:
            self.ostudy.tell(trial, value, state=TrialState.COMPLETE)
        self.heartbeat.remove([trial._trial_id])
        del self.running[trial.number]
        show(self.bar, self.ostudy, counts(self.ostudy), self.study.n_trials)

    def fail_running(self) -> None:
        for trial in self.running.values():
            fail(self.ostudy, trial)
        self.heartbeat.remove([t._trial_id for t in self.running.values()])
        self.running.clear()


def work_population(study: StudyConfig, ostudy: optuna.Study, k: int, timeout: float | None = None,
                    bar: tqdm | None = None) -> None:
    """One worker training up to `k` trials at once until the study holds `n_trials` finished
    ones (or `timeout` seconds pass: no trial starts after that). Waits, like the solo loop, while
    other workers' running trials fill the budget (they may die and be re-run)."""
    base = search_base(study)
    deadline = time.monotonic() + timeout if timeout else None
    with Heartbeat(ostudy._storage) as heartbeat:
        source = TrialMembers(study, ostudy, base, heartbeat, deadline, bar)
        try:
            while True:
                interrupt.check()
                reap(ostudy)
                state = counts(ostudy)
                show(bar, ostudy, state, study.n_trials)
                if n_done(state) >= study.n_trials or (
                        deadline is not None and time.monotonic() >= deadline):
                    return
                if not source.room():
                    interrupt.wait(POLL_S)
                    continue
                fit_population(base, source, k, callbacks=[interrupt.StopOnRequest()])
        except BaseException:
            source.fail_running()
            raise
