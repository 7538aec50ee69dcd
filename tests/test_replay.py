"""A PBT member retraced solo: its lineage read from stored schedules (late joiners and copies of
copies included, planted records refused), and the replay callback setting values and batch
orders at the epochs it names, checked exactly in a real fit."""

from __future__ import annotations

import re

import optuna
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from mhtrain import ConfigError
from mhtrain.config import compose
from mhtrain.pbt import SCHEDULE
from mhtrain.schedule import ScheduleReplay, batch_generator
from mhtrain.study.dashboard_figures import study_lineage
from mhtrain.study.replay import lineage
from mhtrain.train import build, fit

LR, THICK = "model.optimizer.lr", "model.loss_weights.thickness"
SPACE = {LR: FloatDistribution(1e-4, 1e-2, log=True), THICK: FloatDistribution(0.0, 2.0)}


def pbt_study(schedules: dict[int, list[dict]], planted: bool = False) -> optuna.Study:
    """A PBT study as a run stores it: its config, and each member's record and schedule (a
    `planted` one says nothing about where its member started)."""
    # named after conf/study/pbt_loss_weights.yaml: its search space is what the records are read against
    ostudy = optuna.create_study(study_name="pbt_loss_weights", direction="maximize")
    ostudy.set_metric_names(["val/digit_acc"])
    ostudy.set_user_attr("config", {"experiment": "multihead_cnn_mnist", "overrides": [], "pbt": {},
                                    "search_space": {LR: {}, THICK: {}}})
    for number, schedule in sorted(schedules.items()):
        start = {LR: 1e-3, THICK: 1.0} if planted else {LR: schedule[0][LR], THICK: schedule[0][THICK]}
        record = {SCHEDULE: schedule, "experiment": "multihead_cnn_mnist",
                  "overrides": [f"++{LR}={start[LR]}", f"++{THICK}={start[THICK]}", f"seed={100 + number}"]}
        ostudy.add_trial(create_trial(params=start, distributions=SPACE, value=0.5 + number / 10,
                                      user_attrs=record))
    return ostudy


def seg(epoch: int, lr: float, parent: int | None = None, parent_epoch: int | None = None) -> dict:
    copied = {} if parent is None else {"parent_epoch": parent_epoch}
    return {"epoch": epoch, "parent": parent, **copied, LR: lr, THICK: 1.0}


# A and B start together; B copies A after 2 epochs; C joins two epochs later and, after its
# first epoch, copies B (then 3 epochs trained): C's end retraces A to 2, B to 3, then C.
SCHEDULES = {0: [seg(0, 1e-3)], 1: [seg(0, 2e-3), seg(2, 1.2e-3, 0, 2)],
             2: [seg(0, 5e-3), seg(1, 1.44e-3, 1, 3)]}


def test_a_members_lineage_is_retraced_through_copies_of_copies_and_late_joins():
    ostudy = pbt_study(SCHEDULES)
    root, schedule = lineage(ostudy, ostudy.trials[2])
    assert root.number == 0
    assert schedule == [
        {"epoch": 0, "values": {LR: 1e-3, THICK: 1.0}, "order": None, "trial": 0},
        {"epoch": 2, "values": {LR: 1.2e-3, THICK: 1.0}, "order": {"seed": 101, "skip": 2}, "trial": 1},
        {"epoch": 3, "values": {LR: 1.44e-3, THICK: 1.0}, "order": {"seed": 102, "skip": 1}, "trial": 2}]
    # B's own end: A up to 2, then B; A never copied: its own start only
    assert [s["trial"] for s in lineage(ostudy, ostudy.trials[1])[1]] == [0, 1]
    assert lineage(ostudy, ostudy.trials[0])[1] == [schedule[0]]


@pytest.mark.parametrize("planted, says, drawn", [
    ({0: [{"epoch": 0, "parent": None, LR: {"_target_": "os.system"}, THICK: 1.0}]}, "a nested node", False),
    ({0: "rm -rf /"}, "not a list of segments", False),
    ({0: [seg(0, 1e-3), seg(1, 1e-3, 7, 1)]}, "parent 7 (no such trial)", True),
    ({0: [seg(0, 1e-3), seg(2, 1e-3, 1, 3)], 1: [seg(0, 1e-3), seg(2, 1e-3, 0, 3)]}, "has a cycle", True),
    ({0: [seg(2, 1e-3)]}, "not its own start at epoch 0", False),
    ({0: [seg(0, 1e-3), seg(1, 1e-3, 1, True)], 1: [seg(0, 1e-3)]}, "parent_epoch = True refused", False),
])
def test_a_planted_schedule_is_refused_in_one_line(planted, says, drawn):
    """By the replay (export, compare, --confirm) and by the lineage figure (dashboard, report),
    which draws a lineage with a missing parent or a cycle (no link to draw) but no bad segment."""
    ostudy = pbt_study(planted, planted=True)
    with pytest.raises(ConfigError, match=re.escape(says)) as e:
        lineage(ostudy, ostudy.trials[0])
    assert "\n" not in str(e.value) and "records are data" in str(e.value)
    if drawn:
        assert study_lineage(ostudy).data
    else:
        with pytest.raises(ConfigError, match=re.escape(says)):
            study_lineage(ostudy)


class Seen(Callback):
    """Each epoch's first batch and the lr and loss weights it trains with."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, list[float], torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.rows.append((lr, pl_module.priors.tolist(), batch[0].clone()))


def test_the_replay_sets_values_and_batch_orders_at_the_epochs_it_names(tiny_overrides):
    cfg = compose("multihead_cnn_mnist", [*tiny_overrides, "trainer.max_epochs=3", "test=false",
                                          "callbacks.early_stopping=null", "model.scheduler=null",
                                          "model.optimizer.lr=0.001"])
    replay = ScheduleReplay([
        {"epoch": 1, "values": {LR: 0.002, THICK: 1.5}, "order": {"seed": 7, "skip": 1}},
        {"epoch": 2, "values": {LR: 0.0005}, "order": None}])
    seen = Seen()
    fit(cfg, callbacks=[replay, seen])
    assert [(lr, w) for lr, w, _ in seen.rows] == [(0.001, [1.0, 0.5, 0.5]), (0.002, [1.0, 1.5, 0.5]),
                                                   (0.0005, [1.0, 1.5, 0.5])]
    dm = build(cfg).datamodule
    dm.setup("fit")
    batches = dm.train_dataloader()
    g = batch_generator(7, 1, len(batches.index))  # epoch 1: seed 7's second order; epoch 2 its third
    for epoch in (1, 2):
        order = batches.order(g)
        assert torch.equal(seen.rows[epoch][2], batches.gather(order[:batches.batch_size])[0])


def test_without_orders_the_run_keeps_its_own_batch_order(tiny_overrides):
    """`orders=False`: the values replayed on the run's own seed (a fresh-seed re-run)."""
    cfg = compose("multihead_cnn_mnist", [*tiny_overrides, "test=false", "callbacks.early_stopping=null"])
    firsts = []
    switch = [{"epoch": 1, "values": {LR: 0.002}, "order": {"seed": 7, "skip": 1}}]
    for replay in (None, ScheduleReplay(switch, orders=False)):
        seen = Seen()
        fit(cfg, callbacks=[seen, *([replay] if replay else [])])
        firsts.append(seen.rows[1][2])
    assert torch.equal(*firsts)


def test_a_schedule_that_sets_anything_else_is_refused():
    with pytest.raises(ValueError, match="keys model.optimizer.lr and model.loss_weights.<head> only"):
        ScheduleReplay([{"epoch": 1, "values": {"trainer.max_epochs": 3}}])
    with pytest.raises(ValueError, match="no order at epoch 0"):
        ScheduleReplay([{"epoch": 0, "values": {}, "order": {"seed": 1, "skip": 0}}])
