"""Population-based training: the exploit as a row copy, the controller's choices, explore within
the search space, and a PBT study run end to end on tiny data with real Trainers."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from omegaconf import OmegaConf
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.config import compose
from mhtrain.pbt import LR, SCHEDULE, WEIGHTS, Controller, Pbt, PbtSpec, explore, parse_pbt, quantiles
from mhtrain.population import Member
from mhtrain.population.optim import adam_columns
from mhtrain.population.runs import MemberRun
from mhtrain.population.stacked import Stack
from mhtrain.study.dashboard_figures import lineage_figure
from mhtrain.study.params import parse_param
from tests.conftest import ROOT, tiny_for
from tests.device_guards import in_step
from tests.test_gpu_path import DEVICES, HEADS, batch, joining, lit


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def same_batch(g: torch.Generator, k: int, dt: torch.dtype, device: str) -> tuple:
    """One batch given to each of `k` members."""
    x, t = batch(g, 1, 8, dt, device)
    return x.expand(k, *x.shape[1:]).contiguous(), {h: y.expand(k, -1).contiguous() for h, y in t.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_an_exploit_copies_a_members_whole_state_and_then_steps_as_it_does(device):
    # different seeds, dropout streams, loss weights and Adam arguments; three steps apart first
    dt = torch.float64
    models = [lit(1, dt, dropout=0.25, weights={"thickness": 0.5}),
              lit(2, dt, dropout=0.25, optimizer=torch.optim.AdamW, lr=3e-3, weight_decay=0.05,
                  betas=(0.8, 0.95)),
              lit(3, dt, dropout=0.25, lr=2e-3)]
    stack = Stack(models[0]).to(device)
    stack.restack([], [], joining(stack, models, [1, 2, 3]))
    stack.train(True)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        stack.train_step(*batch(g, 3, 8, dt, device))
    before = {k: v.detach().clone() for k, v in stack.rows.items()}
    assert not torch.equal(before["params"][0], before["params"][1])
    untouched = copy.deepcopy(stack)  # the same population without the exploit

    with in_step(device):  # a row copy: kernels on the device, nothing read back, no I/O
        stack.copy_member(0, 1)
    rows = stack.rows
    bn = [k for k in rows if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    dropout = [k for k in rows if k.endswith((".stream", ".draws", ".p"))]
    assert bn and dropout and {"exp_avg", "exp_avg_sq", "step", "lr", "priors"} <= set(rows)
    for key, row in rows.items():  # weights, BatchNorm, dropout, loss weights, Adam: all of it
        assert torch.equal(row[0], row[1]), key
        assert torch.equal(row[1], before[key][1]) and torch.equal(row[2], before[key][2]), key
    assert stack.args[0] == stack.args[1] != stack.args[2]
    assert all(torch.equal(c[0], c[1]) for c in stack.cols.values())
    assert rows["step"].tolist() == [3.0, 3.0, 3.0] and rows["weight_decay"][0] == 0.05

    # the next step, on one batch for all: the copy steps exactly as its source, and the source
    # as it would have without the exploit
    x, t = same_batch(g, 3, dt, device)
    losses = stack.train_step(x, t)
    reference = untouched.train_step(x, t)
    assert losses[0] == losses[1] == reference[1]
    for key, row in rows.items():
        assert torch.equal(row[0], row[1]), key
        assert torch.equal(row[1], untouched.rows[key][1]), key
    assert not torch.equal(rows["params"][1], before["params"][1])  # it did step

    # then the explore: new values for the copy only, from its next step on
    stack.set_hypers(0, lr=1e-4, priors=[1.0, 2.0, 0.0])
    assert rows["lr"].tolist() == [1e-4, 3e-3, 2e-3] and stack.args[0]["lr"] == 1e-4
    assert rows["priors"][0].tolist() == [1.0, 2.0, 0.0]
    assert torch.equal(rows["priors"][1], before["priors"][1])
    fresh = adam_columns(rows, True, dt)
    assert all(torch.equal(stack.cols[k], fresh[k]) for k in fresh)
    stack.train_step(*same_batch(g, 3, dt, device))
    assert not torch.equal(rows["params"][0], rows["params"][1])


def test_quantiles_follow_rays_rule():
    scores = {0: 0.5, 1: 0.9, 2: 0.1, 3: 0.7}
    assert quantiles(scores, 0.25, maximize=True) == ([2], [1])
    assert quantiles(scores, 0.25, maximize=False) == ([1], [2])
    assert quantiles(scores, 0.5, maximize=True) == ([2, 0], [3, 1])
    assert quantiles({0: 0.3, 1: float("nan"), 2: 0.2}, 0.25, True) == ([1], [0])  # nan ranks last
    assert quantiles({0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0}, 0.5, True) == ([0, 1], [3, 4])  # n // 2
    assert quantiles({0: 1.0}, 0.25, True) == ([], [])


class Recorder:
    """An explorer that doubles the copied learning rate and remembers what it was told."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.told: list[tuple] = []

    def explore(self, values, rng: random.Random) -> dict:
        self.seen.append(dict(values))
        return {**values, LR: values[LR] * 2}

    def exploited(self, member, parent, epoch: int, parent_epoch: int, values) -> None:
        self.told.append((member.key, parent.key, epoch, parent_epoch, dict(values)))


def population(scores: list[float]) -> tuple[Stack, list[MemberRun]]:
    """Real members (models, runs, stacked rows), one val epoch each, scored `scores`."""
    models = [lit(i, lr=1e-3 * (i + 1)) for i in range(len(scores))]
    stack, runs, new = Stack(models[0]), [], []
    for i, model in enumerate(models):
        run, args = MemberRun.begin(Member(key=f"m{i}", model=model, seed=i, max_epochs=5), 0)
        run.history.append({"val/digit_acc": scores[i]})
        runs.append(run)
        new.append((stack.member_rows(model, i), args))
    stack.restack([], [], new)
    return stack, runs


def test_the_worst_member_copies_the_best_and_goes_on_with_explored_values():
    stack, runs = population([0.6, 0.2, 0.9, 0.5])
    explorer = Recorder()
    best = {k: v[2].detach().clone() for k, v in stack.rows.items()}
    assert Controller(Pbt(explorer, "val/digit_acc")).step(stack, runs) == [(1, 2)]
    assert explorer.seen == [stack.values(2)] and stack.values(2)[LR] == 3e-3
    assert explorer.told == [("m1", "m2", 1, 1, {**stack.values(2), LR: 6e-3})]
    for key, row in stack.rows.items():
        assert torch.equal(row[1], best[key] if key != "lr" else torch.tensor(6e-3, dtype=torch.float64)), key
    assert runs[1].optimizer.param_groups[0]["lr"] == 6e-3  # what the next restack reads back
    assert stack.values(1)[WEIGHTS + "digit"] == 1.0 and len(stack.values(1)) == 1 + len(HEADS)


def test_a_member_exploits_only_every_interval_epochs():
    stack, runs = population([0.6, 0.2, 0.9, 0.5])
    controller = Controller(Pbt(Recorder(), "val/digit_acc", interval=2))
    assert controller.step(stack, runs) == []  # one epoch trained: not ready
    for run in runs:
        run.history.append(dict(run.history[-1]))
    assert controller.step(stack, runs) == [(1, 2)]
    for run in runs:
        run.history.append(dict(run.history[-1]))
    assert controller.step(stack, runs) == []  # its chance came an epoch ago


def test_explore_perturbs_or_draws_afresh_within_the_search_space():
    space = [parse_param(LR, {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}),
             parse_param("model.loss_weights.thickness", {"type": "float", "low": 0.0, "high": 2.0}),
             parse_param("model.loss_weights.smoothness",
                         {"type": "float", "low": 0.0, "high": 2.0, "step": 0.5})]
    start = {LR: 5e-3, "model.loss_weights.thickness": 1.0, "model.loss_weights.smoothness": 1.0,
             "model.loss_weights.digit": 1.0}
    perturb_only = PbtSpec(resample_probability=0.0)
    rng = random.Random(0)
    for _ in range(50):
        out = explore(space, perturb_only, start, rng)
        assert out[LR] in (pytest.approx(6e-3), pytest.approx(4e-3))
        assert out["model.loss_weights.thickness"] in (pytest.approx(1.2), pytest.approx(0.8))
        assert out["model.loss_weights.smoothness"] == 1.0  # 1.2 or 0.8, back on its 0.5 steps
        assert out["model.loss_weights.digit"] == 1.0  # not searched: kept
    assert explore(space, perturb_only, {**start, LR: 9e-3}, rng)[LR] in (1e-2, pytest.approx(7.2e-3))
    drawn = [explore(space, PbtSpec(resample_probability=1.0), start, rng) for _ in range(200)]
    lrs = [d[LR] for d in drawn]
    assert all(1e-4 <= v <= 1e-2 for v in lrs) and sum(v < 1e-3 for v in lrs) > 60  # log-uniform
    assert {d["model.loss_weights.smoothness"] for d in drawn} <= {0.0, 0.5, 1.0, 1.5, 2.0}
    choice = parse_param("x", {"type": "categorical", "choices": [1, 2, 3]})
    assert {choice.perturb(2, 1.2, rng) for _ in range(30)} == {1, 3}
    assert {choice.perturb(1, 1.2, rng) for _ in range(30)} == {1, 2}


@pytest.mark.parametrize(("raw", "says"), [
    ({"intervl": 1}, "unknown keys"), ({"interval": 0}, "interval"), ({"quantile": 0.7}, "quantile"),
    ({"resample_probability": 2}, "resample_probability"), ({"perturbation_factors": [1.2, -1]}, "factors"),
    ("often", "must be true or a mapping")])
def test_pbt_settings_are_checked(raw, says):
    with pytest.raises(ConfigError, match=says):
        parse_pbt(raw)
    assert parse_pbt(True) == PbtSpec() == PbtSpec(1, 0.25, 0.25, (1.2, 0.8))


def test_the_keys_pbt_may_change_are_declared_once_and_every_rule_follows(tiny_data, monkeypatch):
    """Narrow `mhtrain.pbt.MUTABLE` to the learning rate alone: the study config's check, explore
    and the solo replay all refuse or keep the loss weights, with no other edit."""
    from mhtrain import pbt
    from mhtrain.schedule import ScheduleReplay
    from mhtrain.study import study_config

    weight = WEIGHTS + "thickness"
    space = [parse_param(LR, {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}),
             parse_param(weight, {"type": "float", "low": 0.0, "high": 2.0})]
    start = {LR: 5e-3, weight: 1.0}
    ScheduleReplay([{"epoch": 1, "values": {weight: 0.5}}])  # allowed as declared
    assert explore(space, PbtSpec(resample_probability=1.0), start, random.Random(0))[weight] != 1.0
    monkeypatch.setattr(pbt, "MUTABLE", (LR,))
    with pytest.raises(ConfigError, match=f"search_space key {weight}: .* perturbs only {LR};"):
        study_config.load("pbt_loss_weights", extra_overrides=tiny_for(tiny_data))
    for _ in range(20):
        out = explore(space, PbtSpec(resample_probability=1.0), start, random.Random(_))
        assert out[weight] == 1.0 and out[LR] != 5e-3  # the weight is no longer the explore's
    with pytest.raises(ConfigError, match=f"sets \\['{weight}'\\]: keys {LR} only"):
        ScheduleReplay([{"epoch": 1, "values": {weight: 0.5}}])


def test_a_pbt_study_is_refused_before_work_where_it_cannot_run(tiny_data):
    from mhtrain.study import study_config

    tiny = tiny_for(tiny_data)
    with pytest.raises(ConfigError, match="at least 2 members"):
        study_config.load("pbt_loss_weights", extra_overrides=tiny, population=1)
    with pytest.raises(ConfigError, match="model.scheduler is set"):
        step_lr = "{_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1}"
        study_config.load("pbt_loss_weights", extra_overrides=[*tiny, f"model.scheduler={step_lr}"])


@pytest.mark.slow  # over 10 s: the full tier
def test_a_pbt_study_runs_from_one_command_and_records_each_members_lineage(tiny_data, tmp_path, monkeypatch,
                                                                             capsys):
    import optuna

    from mhtrain.evaluate.figures import comparison_figures
    from mhtrain.evaluate.report import study_items
    from mhtrain.evaluate.reruns import rerun_best, rerun_config
    from mhtrain.study import cli
    from mhtrain.study.confirm import chosen_trial, confirm_config
    from mhtrain.study.export import export, handover_lines
    from mhtrain.study.replay import lineage
    from mhtrain.train import fit

    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'pbt.db'}"
    args = ["--no-progress", "--storage", storage, "--confirm", "2", "--confirm-seeds", "2",
            *tiny_for(tiny_data, epochs=3), "data.train_subset=128", "data.val_size=64",
            "model.net.hidden=16"]
    assert cli.main("pbt_loss_weights", "", args) == 0
    out = capsys.readouterr().out
    assert "population 4 per worker (4 as asked), storage" in out and "training every 1 epoch(s)" in out
    assert "pbt: trial " in out and "  from epoch 0: its own start; model.optimizer.lr=" in out
    ostudy = optuna.load_study(study_name="pbt_loss_weights", storage=storage)
    trials = ostudy.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    numbers, by_number = {t.number for t in trials}, {t.number: t for t in trials}
    exploits = []
    for t in trials:
        schedule = t.user_attrs[SCHEDULE]
        assert schedule[0] == {"epoch": 0, "parent": None, **t.params}  # its start: its own values
        assert sorted(t.intermediate_values) == [1, 2, 3] and t.user_attrs["population"]["members"] == 4
        for seg in schedule[1:]:
            exploits.append(seg)
            assert seg["epoch"] in (1, 2) and seg["parent"] in numbers - {t.number}
            assert seg["parent_epoch"] == seg["epoch"]  # all four joined together
            assert 1e-4 <= seg[LR] <= 1e-2 and 0 <= seg["model.loss_weights.thickness"] <= 2
    # 4 members, quantile 0.25: one copy after each epoch that members go on from (1 and 2)
    assert sorted(s["epoch"] for s in exploits) == [1, 2]
    # the lineage figure, on the dashboard: each member's curve, the 2 copies, 3 schedules each
    stored = ostudy._storage.get_study_system_attrs(ostudy._study_id)
    assert any(k.startswith("dashboard:plot_data:") for k in stored)
    fig = lineage_figure(trials, "val/digit_acc", [LR, "model.loss_weights.thickness",
                                                   "model.loss_weights.smoothness"], [LR])
    assert len(fig.data) == 4 + 2 + 3 * 4
    assert sum("copied trial" in (d.hovertext or "") for d in fig.data) == 2
    # the study's note in the dashboard: the race's verdict, then the answer's schedule
    from optuna_dashboard import get_note

    shown = get_note(ostudy)
    assert shown.index("undecided after 2 seed(s)") < shown.index("The answer is a schedule:")
    from mhtrain.study.analyses import ledger  # the race is recorded among the study's analyses

    (race,) = [a for a in ledger(ostudy) if a.family == "pbt_loss_weights race"]
    assert race.tool == "confirm" and race.look == 1 and len(race.units) == 2
    # --confirm races the top 2 members' answers and the default, their lineages replayed on fresh seeds
    assert "on fresh seeds from 4 (one per round, each with its own validation images)" in out
    confirmed = ostudy.user_attrs["confirmation"]
    for number in ostudy.user_attrs["race"]["finalists"]:
        cfg, (_, replays) = confirm_config(ostudy, by_number[number], 4), lineage(ostudy, by_number[number])
        assert OmegaConf.to_container(cfg.callbacks.pbt_replay.schedule) == replays
        assert cfg.seed == 4 and cfg.callbacks.pbt_replay.orders is False and cfg.test is False
    # the chosen member's answer re-runs solo: the export retraces its lineage from its first member
    if confirmed["chosen"] == "default":  # the race may choose the experiment's own values: no schedule
        assert "pbt_replay" not in confirm_config(ostudy, chosen_trial(ostudy), 4).callbacks
        ostudy.set_user_attr("confirmation", {"chosen": ostudy.user_attrs["race"]["finalists"][0]})
    chosen = chosen_trial(ostudy)
    assert chosen.number == ostudy.user_attrs["confirmation"]["chosen"]
    root, schedule = lineage(ostudy, chosen)
    path, _ = export("pbt_loss_weights", storage, conf_dir=ROOT / "conf")
    try:
        said = handover_lines("pbt_loss_weights", storage, path, [], None)
        assert said[1].startswith("it replays the schedule at the search's fidelity (3 epochs on 128 ")
        assert not any("--keep-checkpoints" in line for line in said)  # no hint a PBT study would refuse
        cfg = compose("best_pbt_loss_weights", ["test=false", f"paths.output_dir={tmp_path / 'replay'}"])
        assert OmegaConf.to_container(cfg.callbacks.pbt_replay.schedule) == schedule
        assert cfg.seed == root.number and cfg.trainer.max_epochs == 3  # the root's seed, the fidelity
        solo = [row["val/digit_acc"] for row in fit(cfg).history]
    finally:
        path.unlink()
    retraced = []  # the lineage's own curve: each stretch's member at its own epochs
    for i, stretch in enumerate(schedule):
        end = schedule[i + 1]["epoch"] if i + 1 < len(schedule) else 3
        skip = stretch["order"]["skip"] if stretch["order"] else 0
        curve = by_number[stretch["trial"]].intermediate_values
        retraced += [curve[skip + 1 + e - stretch["epoch"]] for e in range(stretch["epoch"], end)]
    # a comparison re-trains the answer on fresh seeds: the schedule's values, each seed's own order
    rerun = rerun_config(ostudy, 2000)
    assert rerun.seed == 2000 and rerun.callbacks.pbt_replay.orders is False
    assert OmegaConf.to_container(rerun.callbacks.pbt_replay.schedule) == schedule
    arm = rerun_best(ostudy, [2000])
    assert 0 < arm.values("test/digit_acc")[0] <= 1
    said = [i for i in study_items(arm) if i.startswith("re-runs replay its lineage's schedule: ")]
    assert said and f"from epoch 0 (trial {root.number})" in said[0]  # not the member's own start
    assert any("summed over trials (stacked members train at once" in i for i in study_items(arm))
    assert "PBT lineage: pbt_loss_weights" in [f.title for f in comparison_figures([arm], "test/digit_acc")]
    # equal up to floating-point order (stacked and solo steps round differently): one image of 64
    assert max(abs(a - b) for a, b in zip(solo, retraced, strict=True)) <= 1 / 64 + 1e-9, (solo, retraced)


def test_a_copy_from_a_member_that_joined_earlier_links_from_the_parents_own_epoch():
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    def member(number: int, curve: dict[int, float], schedule: list[dict]):
        t = create_trial(params={LR: 1e-3}, distributions={LR: FloatDistribution(1e-4, 1e-2, log=True)},
                         value=max(curve.values()), intermediate_values=curve,
                         user_attrs={SCHEDULE: schedule})
        t.number = number
        return t

    parent = member(0, {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8}, [{"epoch": 0, "parent": None, LR: 1e-3}])
    late = member(1, {1: 0.2, 2: 0.75}, [{"epoch": 0, "parent": None, LR: 1e-3},
                                         {"epoch": 1, "parent": 0, "parent_epoch": 3, LR: 2e-3}])
    fig = lineage_figure([parent, late], "val/digit_acc", [LR])
    link = next(d for d in fig.data if "copied trial 0" in (d.hovertext or ""))
    assert list(link.x) == [3, 2] and list(link.y) == [0.7, 0.75]  # from the parent's 3rd epoch
