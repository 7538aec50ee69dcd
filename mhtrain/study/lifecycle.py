"""One trial's life, the same for a solo run and a population member: ask (owner recorded),
room in the budget, the over-budget step-back, report and prune, record, tell or fail.

It tells Optuna the state of every trial this process runs: every outcome becomes one in `end`,
as Optuna's own `_run_trial` maps them in one place. The only other teller is the reaper, for
trials whose process died (see `policy`). Engines call it; it imports no Lightning.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState
from tqdm import tqdm

from mhtrain.result import FitResult
from mhtrain.study import checkpoints
from mhtrain.study.interrupt import StudyInterrupted
from mhtrain.study.ledger import FINISHED, counts, n_done, owner, show
from mhtrain.study.policy import requeue
from mhtrain.study.records import FAIL_REASON, OVER_BUDGET, StudyConfig
from mhtrain.study.storage import Heartbeat
from mhtrain.study.trials import trial_config


def reason(error: BaseException) -> str:
    if isinstance(error, StudyInterrupted | KeyboardInterrupt):
        return "interrupted (Ctrl-C or SIGTERM); re-run the command to resume"
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:500]


class Lifecycle:
    """The trials one worker runs in one study: which are running, which a pruner stopped."""

    def __init__(self, study: StudyConfig, ostudy: optuna.Study, heartbeat: Heartbeat,
                 bar: tqdm | None = None, deadline: float | None = None,
                 where: Mapping[str, Any] | None = None) -> None:
        self.study, self.ostudy, self.heartbeat, self.bar = study, ostudy, heartbeat, bar
        self.where = dict(where or {})  # where its trials run (a SLURM task's id), recorded on each
        self.deadline = deadline
        self.running: dict[int, optuna.Trial] = {}
        self.pruned: set[int] = set()
        self.epochs: dict[int, int] = {}  # each running trial's max_epochs: its last report's step

    def room(self) -> bool:
        """Whether the budget allows one more trial now: trials other workers are running count,
        so K workers do not overshoot; enqueued ones (retries, warm starts) always may start."""
        state = counts(self.ostudy)
        return (n_done(state) + state[TrialState.RUNNING] < self.study.n_trials
                or state[TrialState.WAITING] > 0)

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def start(self) -> tuple[optuna.Trial, DictConfig] | None:
        """Ask a trial and give it its config; None when it was one too many: processes that
        asked at the same moment each saw room for one more, and the later-numbered ones step
        back (FAIL, marked, never trained)."""
        trial = self.ostudy.ask()
        # at once: the reaper judges a trial by its owner; `where` says which SLURM task it is
        trial.set_user_attr("owner", {**owner(), **self.where})
        ahead = self.ostudy.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if sum(t.number <= trial.number for t in ahead) > self.study.n_trials:
            trial.set_user_attr(OVER_BUDGET, True)
            trial.set_user_attr(FAIL_REASON, "over budget: asked in a race for the last slot; never trained")
            self._tell(trial, TrialState.FAIL)
            return None
        self.running[trial.number] = trial
        self.heartbeat.add([trial._trial_id])
        try:
            cfg = trial_config(self.study, trial)
            self.epochs[trial.number] = cfg.trainer.max_epochs
            return trial, cfg
        except BaseException as e:
            self.end(trial, error=e)
            raise

    def run(self, trial: optuna.Trial, train: Callable[[], FitResult]) -> TrialState:
        """Train a started trial and end it, whatever happens."""
        try:
            result = train()
        except BaseException as e:
            self.end(trial, error=e)
            raise
        return self.end(trial, result)

    def report(self, trial: optuna.Trial, epochs: float, metrics: Mapping[str, float]) -> bool:
        """Report the metric after `epochs` epochs trained (a fraction in the first epoch when the
        pruner reports sub-epoch); False when the pruner stops the trial. The step counts the
        pruner's `report_every` epochs, one unit for every trial, as bench/pruning.py measured
        them. The last epoch's report is not judged: a trial that trained all its epochs is
        complete, whatever a pruner would say at that step."""
        step = round(epochs / self.study.pruner.report_every)
        trial.report(float(metrics[self.study.metric]), step=step)
        if epochs < self.epochs.get(trial.number, epochs + 1) and trial.should_prune():
            self.pruned.add(trial.number)
            return False
        return True

    def end(self, trial: optuna.Trial, result: FitResult | None = None,
            error: BaseException | None = None) -> TrialState:
        """Every outcome to a state: an error is FAIL (its reason recorded), a pruner's stop
        PRUNED, anything else COMPLETE with the best value over epochs."""
        state, value = TrialState.FAIL, None
        try:
            if error is None and result is not None:
                try:
                    value = self._record(trial, result)
                    state = TrialState.PRUNED if trial.number in self.pruned else TrialState.COMPLETE
                    checkpoints.keep(self.study, trial, result.checkpoint,
                                     value if state == TrialState.COMPLETE else None)
                except Exception as e:  # a result that cannot be recorded fails with its reason
                    state, error = TrialState.FAIL, e
                    raise
        finally:
            if state == TrialState.FAIL:
                with contextlib.suppress(Exception):  # the storage itself may be what failed
                    trial.set_user_attr(FAIL_REASON, reason(error or RuntimeError("no result")))
            self.heartbeat.remove([trial._trial_id])
            self.running.pop(trial.number, None)
            self.pruned.discard(trial.number)
            self.epochs.pop(trial.number, None)
            self._tell(trial, state, value if state == TrialState.COMPLETE else None)
            if isinstance(error, StudyInterrupted | KeyboardInterrupt):
                self._queue_again(trial)
            show(self.bar, self.ostudy, counts(self.ostudy), self.study.n_trials)
        return state

    def _queue_again(self, trial: optuna.Trial) -> None:
        """A stop (Ctrl-C, SIGTERM, a SLURM stop) cut the trial short: this process, its only
        owner, queues it again with its parameters through the one retry path, so the resumed
        study or another SLURM task runs it first; a grid point or a warm start is not lost."""
        with contextlib.suppress(Exception):  # the storage itself may be what stopped us
            if not requeue(self.ostudy, self.ostudy._storage.get_trial(trial._trial_id)):
                return
            cut = ("was cut short by SLURM; enqueued for another task to re-run" if self.where.get("slurm")
                   else "was interrupted; queued again, it runs first when the study resumes")
            (self.bar.write if self.bar is not None else print)(f"trial {trial.number} {cut}")

    def fail_running(self, error: BaseException) -> None:
        """End every trial still running here as failed (an engine broke under all of them)."""
        for trial in list(self.running.values()):
            self.end(trial, error=error)

    def _record(self, trial: optuna.Trial, result: FitResult) -> float:
        """Store what the run measured on its trial; return the objective value."""
        for key, value in result.best.items():
            if key.endswith("_acc") or key == self.study.metric:
                trial.set_user_attr(f"best_{key}", value)
        for key, value in (("epochs", result.compute), ("seconds", round(result.seconds, 2)),
                           ("params", result.params), ("stopped", result.stopped),
                           ("population", result.population)):
            if value is not None:
                trial.set_user_attr(key, value)
        return result.best[self.study.metric]

    def _tell(self, trial: optuna.Trial, state: TrialState, value: float | None = None) -> None:
        if state != TrialState.FAIL:
            self.ostudy.tell(trial, value, state=state)
            return
        # a reaper (another worker, or the heartbeat) may have failed it first
        with contextlib.suppress(RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
            self.ostudy.tell(trial, state=TrialState.FAIL)
