"""Turn a search's ranking into an answer. A search ranks its trials by one noisy evaluation each,
and its best carries the winner's curse: it is best partly because its noise was kind.

`--confirm K` races the top K trials and the experiment's default on fresh seeds, one round per
seed (`mhtrain.study.race` judges; `anytime` gives its intervals). Each round's runs use a seed
no trial used and draw their own train/validation split from it (`data.split_seed`), so the race
never selects on the images the search selected on; the test split stays unread. Every run is
stored on the study as it ends (`race:<arm>:<seed>`), so a killed race resumes without
re-training, and a larger `--confirm-seeds` continues the same race. The verdict is stored as
`confirmation`; export and compare hand over its `chosen` arm."""

from __future__ import annotations

import argparse
import math
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mhtrain import ConfigError
from mhtrain.study.policy import not_the_runs
from mhtrain.study.race import DEFAULT, Verdict, judge
from mhtrain.study.records import trial_attr
from mhtrain.study.replay import retrain_config
from mhtrain.study.untrusted import searched, study_metric, trial_record

ATTR = "confirmation"  # study user attribute: the verdict, with the `chosen` arm export hands over
RACE = "race"  # study user attribute: the race's design (finalists, first seed, delta)
TOP, SEEDS, DELTA = 3, 10, 0.002  # the defaults of --confirm, --confirm-seeds and --confirm-delta
ROOT = "runs/confirm"
MAX_SEED = 2**31 - 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--confirm [K], --confirm-seeds S and --confirm-delta D on a study's command line."""
    p.add_argument("--confirm", type=int, nargs="?", const=TOP, metavar="K",
                   help=f"after the search, race the top K trials (default {TOP}) and the experiment's "
                        "default on fresh seeds and fresh validation images, one seed per round, dropping "
                        "a finalist once it is confidently worse (anytime-valid intervals, 5%% error)")
    p.add_argument("--confirm-seeds", type=int, default=SEEDS, metavar="S",
                   help=f"the race's cap on rounds (default {SEEDS}); a larger S later continues the "
                        "same race")
    p.add_argument("--confirm-delta", type=float, default=DELTA, metavar="D",
                   help=f"finalists within D of each other, in the metric's units, count as equivalent "
                        f"(default {DELTA}: 0.2 pp of an accuracy)")


def check(args: argparse.Namespace) -> None:
    if args.confirm is not None and args.confirm < 1:
        raise ConfigError(f"--confirm {args.confirm}: race at least 1 trial (it races the default too)")
    if args.confirm_seeds < 2:
        raise ConfigError(f"--confirm-seeds {args.confirm_seeds}: a paired race needs at least 2 seeds")
    if not (math.isfinite(args.confirm_delta) and args.confirm_delta > 0):
        raise ConfigError(f"--confirm-delta {args.confirm_delta}: must be a number > 0")


class Design(BaseModel):
    """The stored race design (`race`), read back as data: its finalists and seeds decide which
    runs count, so nothing else is accepted."""

    model_config = ConfigDict(extra="forbid", strict=True)
    finalists: list[int] = Field(min_length=1, max_length=100)
    first_seed: int = Field(ge=0, le=MAX_SEED)
    delta: float = Field(gt=0, allow_inf_nan=False)


class Run(BaseModel):
    """One stored run of the race: its value, or why it has none."""

    model_config = ConfigDict(extra="forbid", strict=True)
    value: float | None = Field(default=None, allow_inf_nan=False)
    error: str | None = Field(default=None, max_length=500)
    seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # its training time


def _where(ostudy: optuna.Study) -> str:
    return f"study {ostudy.study_name}"


def read_design(ostudy: optuna.Study) -> Design | None:
    raw = ostudy.user_attrs.get(RACE)
    if raw is None:
        return None
    try:
        return Design.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{_where(ostudy)}: stored `{RACE}` refused ({e.errors()[0]['msg']}); "
                          f"remove the study's `{RACE}` attribute to race again") from None


def run_key(arm: str, seed: int) -> str:
    return f"{RACE}:{arm}:{seed}"


def read_run(ostudy: optuna.Study, arm: str, seed: int, attrs: Mapping | None = None) -> Run | None:
    """The stored run, checked as data; `attrs`: the study's attributes, one storage query for many."""
    raw = (ostudy.user_attrs if attrs is None else attrs).get(run_key(arm, seed))
    if raw is None:
        return None
    try:
        run = Run.model_validate(raw)
    except ValidationError:
        raise ConfigError(f"{_where(ostudy)}: stored `{run_key(arm, seed)}` refused (not a value or an "
                          "error); remove it to train that run again") from None
    if (run.value is None) == (run.error is None):
        raise ConfigError(f"{_where(ostudy)}: stored `{run_key(arm, seed)}` refused (needs a value or an "
                          "error, one of them)")
    return run


def top_trials(ostudy: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The k best complete trials, best first (the search's ranking)."""
    done = [t for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    maximize = ostudy.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))
    if not ranked:
        raise ConfigError(f"--confirm: study {ostudy.study_name} has no complete trial; nothing to race")
    return ranked[:k]


def fresh_seeds(ostudy: optuna.Study, n: int) -> list[int]:
    """n seeds above every seed a trial of the study used: none of its runs is repeated."""
    used = [int(o.removeprefix("seed=")) for t in ostudy.get_trials(deepcopy=False)
            for o in trial_attr(ostudy, t, "overrides", fatal=False) or []
            if re.fullmatch(r"seed=-?\d{1,10}", str(o))]
    start = min(max(used, default=-1) + 1, MAX_SEED - n)
    return list(range(start, start + n))


def arm_name(trial: int) -> str:
    return f"trial {trial}"


FRESH = ["test=false", "trainer.enable_progress_bar=false"]


def confirm_config(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial, seed: int) -> DictConfig:
    """The trial's configuration at the study's fidelity with `seed`, its own train/validation split
    drawn from `seed` (a PBT member's: its replayed schedule), trained without the test split."""
    return retrain_config(ostudy, trial, seed, ROOT, [*FRESH, f"data.split_seed={seed}"])


def default_config(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial, seed: int) -> DictConfig:
    """The experiment's own values at the study's fidelity: `trial`'s record without what the
    search set (for a PBT study, without its schedule too)."""
    from mhtrain.config import compose

    experiment, stored = trial_record(ostudy, default_trial(ostudy, trial))
    kept = [o for o in stored if not o.startswith("seed=")]
    name = re.sub(r"[^A-Za-z0-9_.@:+-]", "_", ostudy.study_name)
    return compose(experiment, [*kept, f"seed={seed}", *FRESH, f"data.split_seed={seed}",
                                f"paths.output_dir={ROOT}/{name}/default_seed{seed}"])


def confirm(ostudy: optuna.Study, k: int = TOP, cap: int = SEEDS, delta: float = DELTA,
            say: Callable[[str], None] = print) -> Verdict:
    """Race the top k trials and the default, round by round, storing each run as it ends; store
    the verdict on the study and return it. A stored race continues (same finalists, same seeds)."""
    from mhtrain.train import fit  # Lightning: only once a race runs

    design = read_design(ostudy)
    if design is None:
        design = Design(finalists=[t.number for t in top_trials(ostudy, k)],
                        first_seed=fresh_seeds(ostudy, cap)[0], delta=delta)
    elif len(design.finalists) != k or design.delta != delta:
        raise ConfigError(f"{_where(ostudy)} has a race of {len(design.finalists)} finalist(s) at delta "
                          f"{design.delta:g}; continue it with --confirm {len(design.finalists)} "
                          f"--confirm-delta {design.delta:g}, or remove the study's `{RACE}` attribute")
    complete = {t.number: t for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if missing := [n for n in design.finalists if n not in complete]:
        raise ConfigError(f"{_where(ostudy)}: stored `{RACE}` names trial {missing[0]}, not a complete trial")
    ostudy.set_user_attr(RACE, design.model_dump())
    trials = [complete[n] for n in design.finalists]
    arms = [*map(arm_name, design.finalists), DEFAULT]
    build = {arm_name(t.number): (lambda s, t=t: confirm_config(ostudy, t, s)) for t in trials}
    build[DEFAULT] = lambda s: default_config(ostudy, trials[0], s)
    for s in range(design.first_seed, design.first_seed + 2):  # every arm composes before any trains
        for make in build.values():
            make(s)
    metric = study_metric(ostudy)
    maximize = ostudy.direction == optuna.study.StudyDirection.MAXIMIZE
    say(f"race: {', '.join(arms)} on fresh seeds from {design.first_seed} (one per round, each with "
        f"its own validation images), {metric}, at most {cap} rounds, equivalent within {design.delta:g}")
    while True:
        values, failed = _stored(ostudy, arms, design.first_seed, cap)
        verdict = judge(arms, values, failed, maximize, design.delta, cap)
        todo = verdict.to_train()
        if not todo:
            break
        seed = design.first_seed + verdict.rounds
        for arm in todo:
            if read_run(ostudy, arm, seed) is None:
                run = _train(fit, build[arm](seed), metric)
                ostudy.set_user_attr(run_key(arm, seed), run.model_dump(exclude_none=True))
                say(f"  round {verdict.rounds + 1}, seed {seed}, {arm}: "
                    + (f"{metric} = {run.value:.4f}" if run.error is None else f"failed ({run.error})"))
    ostudy.set_user_attr(ATTR, as_attr(verdict, design))
    say(cost_line(ostudy, arms, design.first_seed, cap))
    return verdict


def cost_line(ostudy: optuna.Study, arms: list[str], first: int, cap: int) -> str:
    """What the race cost, from its stored runs: to set against a fixed confirmation's runs."""
    attrs = ostudy.user_attrs
    runs = [r for a in arms for s in range(first, first + cap)
            if (r := read_run(ostudy, a, s, attrs)) is not None]
    timed = [r.seconds for r in runs if r.seconds is not None]
    return (f"race cost: {len(runs)} run(s), {sum(timed):.0f} s training"
            + ("" if len(timed) == len(runs) else f" (the {len(timed)} run(s) that stored their time)"))


def _train(fit: Callable, cfg: DictConfig, metric: str) -> Run:
    """One run of the race: a value, or the one-line reason it has none (the race goes on)."""
    shutil.rmtree(cfg.paths.output_dir, ignore_errors=True)  # what an interrupted run left
    try:
        result = fit(cfg)
        value = float(result.best[metric])
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # one finalist's failure is that finalist's, not the race's ...
        if (end := not_the_runs(e, Path(cfg.paths.output_dir).parent)) is e:
            raise  # ... unless every run would meet it alike: then nothing is stored
        if end is not None:
            raise end from e
        return Run(error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}".rstrip(": "))
    if not math.isfinite(value):
        return Run(error=f"non-finite {metric} ({value})", seconds=result.seconds)
    return Run(value=value, seconds=result.seconds)


def _stored(ostudy: optuna.Study, arms: list[str], first: int, cap: int) -> tuple[dict, dict]:
    """Each arm's stored values in seed order up to its first missing seed, and the arms whose run
    failed (with the reason)."""
    values: dict[str, list[float]] = {a: [] for a in arms}
    failed: dict[str, str] = {}
    attrs = ostudy.user_attrs
    for arm in arms:
        for seed in range(first, first + cap):
            run = read_run(ostudy, arm, seed, attrs)
            if run is None:
                break
            if run.error is not None:
                failed[arm] = f"seed {seed}: {run.error}"
                break
            values[arm].append(run.value)
    return values, failed


def as_attr(verdict: Verdict, design: Design) -> dict:
    """The verdict as stored: what export reads (`chosen`: a trial number or "default")."""
    def number(arm: str | None) -> int | str | None:
        return arm if arm in (None, DEFAULT) else int(arm.removeprefix("trial "))

    return {"ending": verdict.ending, "chosen": number(verdict.chosen), "rule": verdict.rule,
            "winner": number(verdict.winner), "rounds": verdict.rounds, "first_seed": design.first_seed,
            "alive": [number(a) for a in verdict.alive], "means": verdict.means,
            "p_best": verdict.p_best, "failed": verdict.failed, "eliminated": verdict.eliminated}


def chosen_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The study's answer, the trial export and compare hand on: the arm `--confirm`'s race chose
    on fresh seeds, else the search's best. The stored choice is data: it must name a complete
    trial of this study, or the default (then the search's best with what the search set taken
    out: the experiment's own values at the study's fixed overrides)."""
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study {study.study_name} has no completed trial yet; run it first") from None
    confirmation = study.user_attrs.get(ATTR)
    if confirmation is None:
        return best
    chosen = confirmation.get("chosen") if isinstance(confirmation, dict) else None
    if chosen == DEFAULT:
        return default_trial(study, best)
    complete = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if not isinstance(chosen, int) or isinstance(chosen, bool) or chosen not in complete:
        raise ConfigError(f"study {study.study_name}: its stored confirmation chooses {str(chosen)[:40]!r}, "
                          "not a complete trial; run --confirm again or remove the study's `confirmation`")
    return complete[chosen]


def default_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """`trial` as the default: its record without the searched keys, no searched params, marked
    `DEFAULT` (a PBT study's replay then retraces no schedule)."""
    _, stored = trial_record(study, trial)
    keys = set(searched(study))
    kept = [o for o in stored if o.split("=", 1)[0].lstrip("+~") not in keys]
    out = optuna.trial.FrozenTrial(
        number=trial.number, state=trial.state, value=trial.value, datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete, params={}, distributions={},
        user_attrs={**trial.user_attrs, "overrides": kept, DEFAULT: True}, system_attrs={},
        intermediate_values={}, trial_id=trial._trial_id)
    return out

