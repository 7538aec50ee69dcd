"""Where a run's curves go besides metrics.csv: TensorBoard and MLflow (`conf/logger/`).

The loggers are Lightning's own; this is the glue. A study points them at its trials
(`for_trial`: MLflow experiment = the study's folder, run = trial_NNNN, tags), an engine ends each trial's
run with the trial's end state (`TrialRun.end`), and an MLflow URI that does not answer is
refused when the config is composed (`check`). A tracking server that stops answering later costs
one warning line per trial, never the trial: the Optuna storage remains the record.

Imports nothing heavy at module level: the study's lower layers import it.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mhtrain import ConfigError, program
from mhtrain.urls import masked, scrubbed, without_password

TRACKING = "tracking"  # trial user attribute: logger name -> where its curves are
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
# a server that died must not stall each trial for minutes of retries (a user's setting wins)
MLFLOW_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _loggers(cfg: DictConfig) -> Mapping[str, Any]:
    return {k: v for k, v in (cfg.get("logger") or {}).items() if v is not None}


# The MLflow stores of the local configuration, as configs composed here name them (without their
# password, which only this process holds) -> as given. The reaper ends runs in these only.
_stores: dict[str, str] = {}


def local_stores() -> dict[str, str]:
    """The MLflow stores this process may open: the environment's, and those of the configs it
    composed (its own command line and study config), never one read from a storage."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return {**({without_password(env): env} if env else {}), **_stores}


def check(cfg: DictConfig) -> None:
    """Refuse, in one line, an MLflow logger that cannot work: MLflow not installed, or an
    http(s) tracking URI where no server answers. Called once per composed study or run. A password
    in the URI stays in this process: the config (its config.yaml, hparams.yaml, what a study
    stores, what MLflow logs as params) names the store without it."""
    ml = _loggers(cfg).get("mlflow")
    if ml is None:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("logger=mlflow needs MLflow: pip install -e '.[mlflow]'") from None
    uri = str(ml.get("tracking_uri") or "")
    clean = without_password(uri)
    if clean != uri:
        OmegaConf.update(cfg, "logger.mlflow.tracking_uri", clean, merge=False)
    _stores.setdefault(clean, uri)
    if uri.startswith(("http://", "https://")):
        try:
            host = re.sub(r"^(\w+://)[^/@]*@", r"\1", clean)  # urllib takes no user in the address
            with urllib.request.urlopen(host.rstrip("/") + "/health", timeout=5) as r:
                r.read()
        except (OSError, ValueError, urllib.error.URLError) as e:
            why = scrubbed(" ".join(str(getattr(e, "reason", e)).split()))
            raise ConfigError(f"logger.mlflow.tracking_uri={masked(uri)} does not answer ({why}); start the "
                              "server (`make mlflow`) or choose another logger") from None


def experiment_name(output_dir: str) -> str:
    """A trial's MLflow experiment: its study's folder (`lr-1a2b3c4d`), unique to the study in its
    storage as TensorBoard's folders are, so two studies named `lr` never share runs."""
    return Path(output_dir).parent.name


def for_trial(cfg: DictConfig, study: str, number: int, params: Mapping[str, Any]) -> dict[str, str]:
    """Point `cfg`'s tracking loggers at one study trial (in place); returns where its curves go
    (logger -> location), for the trial's user attributes and the study's summary."""
    loggers, where = _loggers(cfg), {}
    if "mlflow" in loggers:
        tags = {"study": study, "trial": str(number), "seed": str(cfg.seed),
                "output_dir": str(cfg.paths.output_dir)}
        for key, value in (("experiment_name", experiment_name(cfg.paths.output_dir)),
                           ("run_name", f"trial_{number:04d}"), ("tags", tags), ("params", dict(params))):
            OmegaConf.update(cfg, f"logger.mlflow.{key}", value, merge=False, force_add=True)
        where["mlflow"] = without_password(str(cfg.logger.mlflow.tracking_uri))  # stored: shared
    if "tensorboard" in loggers:
        where["tensorboard"] = str(cfg.logger.tensorboard.save_dir)
    return where


def _warn(what: str, error: BaseException) -> None:
    print(f"warning: {what}: {type(error).__name__}: {scrubbed(' '.join(str(error).split()))[:200]}; "
          "the study goes on without it", file=sys.stderr, flush=True)


@functools.cache
def _mlflow_class() -> type:
    from lightning.fabric.loggers.logger import _DummyExperiment
    from lightning.pytorch.loggers import MLFlowLogger

    class TrialMLFlowLogger(MLFlowLogger):
        """Lightning's MLFlowLogger; with `params` (a study trial's sampled values) those are the
        run's params instead of the whole config, and a server that stops answering costs one
        warning line, after which this run logs nothing more."""

        def __init__(self, params: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.trial_params = None if params is None else dict(params)
            self.broken = False

        def guarded(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
            if self.broken:
                return None
            try:
                return call(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - the tracking server is not the trial
                if not self.broken:  # a nested call may have warned already
                    self.broken = True
                    _warn(f"MLflow at {masked(self._tracking_uri)} failed to {what} for run "
                          f"{self._run_name or self._experiment_name}", e)
                return None

        @property
        def experiment(self) -> Any:  # the Trainer's setup touches it: creating the run may fail
            made = self.guarded("create the run", MLFlowLogger.experiment.fget, self)
            return _DummyExperiment() if made is None else made

        def log_hyperparams(self, params: Any) -> None:
            if self.trial_params is not None:
                params, self.trial_params = self.trial_params, {}  # once: MLflow params are fixed
            self.guarded("log params", super().log_hyperparams, params)

        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            self.guarded("log metrics", super().log_metrics, metrics, step)

        def finalize(self, status: str = "success") -> None:
            self.guarded("end the run", super().finalize, status)

        def end_trial(self, state: str, metric: str, best: float | None) -> None:
            """Tag the trial's end state and best value; a pruned or failed trial's run ends
            KILLED or FAILED."""
            def end() -> None:
                client, run = self.experiment, self.run_id
                client.set_tag(run, "state", state)
                if best is not None:
                    client.log_metric(run, f"best/{metric}", best)
                client.set_terminated(run, MLFLOW_STATUS.get(state, "FAILED"))
            self.guarded("record the trial's end", end)

    return TrialMLFlowLogger


def mlflow_logger(tracking_uri: str | None = None, params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """The Hydra target of `conf/logger/mlflow.yaml`: Lightning's MLFlowLogger, guarded; a store
    whose password `check` took out of the config gets it back here, in this process only."""
    uri = _stores.get(str(tracking_uri or ""), str(tracking_uri or ""))
    if uri.startswith(("http://", "https://")):
        for key, value in MLFLOW_HTTP.items():
            os.environ.setdefault(key, value)
    elif uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(os.path.abspath(uri[len("sqlite:///"):])), exist_ok=True)
    plain = OmegaConf.to_container if isinstance(params, DictConfig) else dict
    return _mlflow_class()(tracking_uri=uri or None,
                           params=None if params is None else plain(params),
                           tags=None if tags is None else {str(k): str(v) for k, v in tags.items()},
                           **kwargs)


@dataclass
class TrialRun:
    """One trial's tracking runs, from start to end: an engine creates it with the trial, hands
    its `callback()` to `fit` (a member passes its loggers in), and calls `end` with the state
    the lifecycle gave the trial."""

    number: int
    params: dict[str, Any]
    metric: str
    loggers: list[Any] = field(default_factory=list)
    best: float | None = None

    def callback(self) -> Any:
        """A Lightning callback that hands the trial's loggers over when `fit` builds them."""
        from lightning.pytorch.callbacks import LambdaCallback

        return LambdaCallback(setup=lambda trainer, pl_module, stage: setattr(
            self, "loggers", list(trainer.loggers)))

    def keep(self, result: Any) -> Any:
        """Note `result`'s best value (a `FitResult`), and pass it on."""
        self.best = result.best.get(self.metric)
        return result

    def end(self, state: str, result: Any = None) -> None:
        """End the trial's tracking runs with its state (COMPLETE, PRUNED, FAIL); never raises."""
        if result is not None:
            self.keep(result)
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in self.loggers:
            try:
                if isinstance(logger, TensorBoardLogger) and self.best is not None:
                    # the HPARAMS tab: sampled values (and trial, state) against the best value
                    logger.log_hyperparams({**self.params, "trial": self.number, "state": state},
                                           metrics={f"best/{self.metric}": self.best})
                    logger.finalize("success")
                elif hasattr(logger, "end_trial"):
                    logger.end_trial(state, self.metric, self.best)
            except Exception as e:  # noqa: BLE001 - a tracking failure never fails the trial
                _warn(f"trial {self.number}'s {type(logger).__name__} could not record its end", e)


def existing_store(uri: str) -> bool:
    """Whether an MLflow URI names a store that already exists: a server, or a SQLite or file
    store on disk. MLflow creates a local store wherever its URI points: ending a run never does."""
    if uri.startswith(("http://", "https://")):
        return True
    path = uri.removeprefix("sqlite:///").removeprefix("file://")
    return path != uri and Path(path).exists() or Path(uri).is_dir()


def end_abandoned(number: int, logged: Mapping[str, str] | None, output_dir: str | None) -> None:
    """End FAILED the MLflow run of trial `number` whose worker died (the reaper failed the trial):
    MLflow has no heartbeat, so the run would otherwise show RUNNING for ever. `logged` and
    `output_dir` are the trial's checked records; the store it names is only a choice among this
    process's own (`local_stores`): a URI read from a storage is never opened. Never raises."""
    full = local_stores().get((logged or {}).get("mlflow") or "")
    if full is None or not output_dir or not existing_store(full):
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(full)
        experiment = client.get_experiment_by_name(experiment_name(output_dir))
        runs = [] if experiment is None else client.search_runs(
            [experiment.experiment_id], f"tags.trial = '{number}' and attributes.status = 'RUNNING'")
        for r in runs:
            client.set_tag(r.info.run_id, "state", "FAIL")
            client.set_terminated(r.info.run_id, "FAILED")
    except Exception as e:  # noqa: BLE001 - the tracking server is not the study
        _warn(f"trial {number}'s MLflow run could not be ended", e)


def curves(logged: Iterable[tuple[Mapping[str, str] | None, str | None]]) -> list[str]:
    """The commands that show the curves of trials, for the study's summary, from each trial's
    checked records: where it logged, and its folder. Stored places are printed quoted, masked."""
    where: dict[str, set[str]] = {}
    studies = set()
    for places, output_dir in logged:
        for name, place in (places or {}).items():
            where.setdefault(name, set()).add(place)
        if "mlflow" in (places or {}):
            studies.add(experiment_name(str(output_dir or "")))
    study = ", ".join(quote(s) for s in sorted(studies))
    board = program("tensorboard")
    lines = [f"curves: {board} --logdir {quote(masked(place))} --host 127.0.0.1  (or `make tensorboard`)"
             for place in sorted({os.path.dirname(p.rstrip("/")) for p in where.get("tensorboard", ())})]
    for uri in sorted(where.get("mlflow", ())):
        if uri.startswith(("http://", "https://")):
            lines.append(f"curves: MLflow experiment {study} at {quote(masked(uri))}")
        else:
            lines.append(f"curves: {program('mlflow')} ui --backend-store-uri {quote(masked(uri))} "
                         "--host 127.0.0.1  "
                         f"(or `make mlflow`), experiment {study}")
    return lines
