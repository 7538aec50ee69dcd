"""Populations: K trials trained as one stacked model give what their solo runs give."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from optuna.pruners import ThresholdPruner
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.config import compose
from mhtrain.data import mnist
from mhtrain.data.datamodule import MemberBatches, MNISTDataModule
from mhtrain.models.module import metric_names
from mhtrain.population.fit import fit_population, member_from_config
from mhtrain.population.optim import adam_args, adam_rows, adam_step
from mhtrain.study import runner, space
from mhtrain.study.population import check_vectorizable, population_size, work_population
from mhtrain.train import fit

NOISE = 230  # bar over noise: about 75-95% right after one epoch
# three trials of one study: different seeds, learning rates and loss weights
TRIALS = [
    ["seed=1", "model.optimizer.lr=0.0008", "model.loss_weights.thickness=0.5"],
    ["seed=2", "model.optimizer.lr=0.001", "model.loss_weights.thickness=0.0"],
    ["seed=3", "model.optimizer.lr=0.0005", "model.loss_weights.smoothness=1.5"],
]


@pytest.fixture(scope="module")
def bars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,500 images whose digit is a short bar at height 2*digit+4, at a random column, in heavy
    noise: learnable, but not all right after one epoch, so trajectories that differ show it."""
    root = tmp_path_factory.mktemp("bars")
    g = torch.Generator().manual_seed(0)
    raw = mnist.raw_dir(root)
    raw.mkdir(parents=True)
    for split, n in (("train", 2500), ("test", 10)):
        labels = torch.randint(0, 10, (n,), generator=g)
        images = (torch.rand(n, 28, 28, generator=g) * NOISE).to(torch.uint8)
        cols = torch.randint(0, 20, (n,), generator=g)[:, None] + torch.arange(8)
        images[torch.arange(n)[:, None], (2 * labels + 4)[:, None], cols] = 255
        img_name, lbl_name = mnist.SPLIT_FILES[split]
        mnist.write_idx_images(raw / img_name, images)
        mnist.write_idx_labels(raw / lbl_name, labels)
    return root


class FirstLoss(Callback):
    """The training loss of the first step (per member, for a population)."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.loss is None:
            self.loss = outputs["loss"].detach().cpu()


class Listed:
    """A MemberSource over fixed configs: every member runs to its end."""

    def __init__(self, configs: list, base) -> None:
        self.configs, self.base, self.results = list(configs), base, {}

    def next(self, free: int) -> list:
        taken, self.configs = self.configs[:free], self.configs[free:]
        return [member_from_config(cfg, i + len(self.results), self.base) for i, cfg in enumerate(taken)]

    def report(self, member, epoch: int, metrics) -> bool:
        return True

    def finish(self, member, result) -> None:
        self.results[member.key] = result


def test_member_batches_are_each_members_solo_batches(tiny_data):
    solo = {}
    for seed in (5, 6):
        dm = MNISTDataModule(str(tiny_data), heads={"digit": {"classes": 10}}, verify=False,
                             val_size=100, batch_size=32, seed=seed)
        dm.setup("fit")
        solo[seed] = list(dm.train_dataloader())
    stacked = list(MemberBatches(dm.train_dataloader(),
                                 lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]))
    assert len(stacked) == len(solo[5])
    for b, (x, y) in enumerate(stacked):
        for k, seed in enumerate((5, 6)):
            assert torch.equal(x[k], solo[seed][b][0])
            assert torch.equal(y["digit"][k], solo[seed][b][1]["digit"])
    assert not torch.equal(stacked[0][0][0], stacked[0][0][1])  # the two orders differ


def test_population_trains_each_member_as_its_solo_run(bars, tmp_path):
    # dropout off: a member draws its own masks (independent per member), not its solo run's
    common = [f"data.data_dir={bars}", "data.verify=false", "data.val_size=500", "data.batch_size=32",
              "trainer.max_epochs=1", "test=false", "callbacks.model_checkpoint=null",
              "++trainer.enable_checkpointing=false", "trainer.enable_progress_bar=false",
              "model.net.dropout=0.0"]
    configs = [compose("multihead_cnn_mnist", [*common, *t, f"paths.output_dir={tmp_path}/pop{i}"])
               for i, t in enumerate(TRIALS)]
    solo_loss, solo_acc = [], []
    for i, t in enumerate(TRIALS):
        first = FirstLoss()
        result = fit(compose("multihead_cnn_mnist", [*common, *t, f"paths.output_dir={tmp_path}/solo{i}"]),
                     callbacks=[first])
        solo_loss.append(first.loss)
        solo_acc.append(result["best"]["val/digit_acc"])

    first, source = FirstLoss(), Listed(configs, compose("multihead_cnn_mnist", [*common, *TRIALS[0]]))
    assert fit_population(source.base, source, 3, callbacks=[first]) == 3
    assert torch.allclose(first.loss, torch.stack(solo_loss), rtol=1e-4, atol=0)
    for i in range(3):
        acc = source.results[i]["best"]["val/digit_acc"]
        assert abs(acc - solo_acc[i]) <= 0.01, (i, acc, solo_acc[i])
        assert 0.3 < acc < 0.99  # learning, and not so easy that every run agrees anyway
        assert source.results[i]["epochs"] == 1 and source.results[i]["params"] == 422_866
    with open(tmp_path / "solo0/csv/metrics.csv") as f, open(tmp_path / "pop0/csv/metrics.csv") as g:
        assert next(csv.reader(f)) == next(csv.reader(g))


def test_stacked_adam_step_is_torch_adam_per_member():
    g = torch.Generator().manual_seed(0)
    members = [(torch.optim.Adam, {"lr": 1e-3}), (torch.optim.Adam, {"lr": 3e-2, "weight_decay": 0.1}),
               (torch.optim.AdamW, {"lr": 5e-3, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.05}),
               (torch.optim.Adam, {"lr": 1e-2, "betas": (0.5, 0.9)})]
    start = torch.randn(len(members), 300, generator=g)
    grads = [torch.randn(len(members), 300, generator=g) for _ in range(3)]
    solo = []
    for k, (kind, args) in enumerate(members):
        p = start[k].clone().requires_grad_()
        opt = kind([p], **args)
        for grad in grads:
            p.grad = grad[k].clone()
            opt.step()
        solo.append(p.detach())
    param = start.clone()
    rows = {}
    for kind, args in members:
        row = adam_rows(adam_args(kind([torch.zeros(1, requires_grad=True)], **args)), 300, param.device)
        rows = {key: torch.cat([rows[key], v[None]]) if rows else v[None] for key, v in row.items()}
    for grad in grads:
        adam_step(param, grad.clone(), rows)
    torch.testing.assert_close(param, torch.stack(solo), rtol=0, atol=0)  # bit for bit
    with pytest.raises(ConfigError, match="Adam or AdamW"):
        adam_args(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))


def test_members_leave_and_join_within_an_exact_budget(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = space.load("lr", extra_overrides=[
        f"data.data_dir={tiny_data}", "data.verify=false", "data.val_size=100", "data.batch_size=32",
        "trainer.max_epochs=3", "callbacks.early_stopping=null"], n_trials=5, population=2)
    ostudy = runner.open_study(study, f"sqlite:///{tmp_path / 'optuna.db'}")
    ostudy.pruner = ThresholdPruner(lower=0.5)  # a chance-level epoch is pruned at once
    for lr in (3e-3, 3e-3, 3e-3, 1e-7, 1e-7):
        ostudy.enqueue_trial({"model.optimizer.lr": lr})
    work_population(study, ostudy, k=2)

    trials = ostudy.get_trials()
    assert len(trials) == 5
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED] * 2
    for t in trials:
        epochs = t.user_attrs["epochs"]
        assert epochs == (3 if t.state == TrialState.COMPLETE else 1)
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1))  # steps: epochs trained
        assert t.user_attrs["population"]["members"] <= 2
        with open(Path(t.user_attrs["output_dir"]) / "csv" / "metrics.csv") as f:
            rows = list(csv.reader(f))
        assert rows[0] == sorted(["epoch", "step", *metric_names(["digit", "thickness", "smoothness"],
                                                                 ("train", "val"))])
        assert len(rows) == 1 + 2 * epochs
    for t in trials[:3]:
        assert t.value == max(t.intermediate_values.values()) == t.user_attrs["best_val/digit_acc"]
    # trial 4 took the slot trial 3 left while trial 2 trained on
    joined = {t.number: t.user_attrs["population"]["joined_epoch"] for t in trials}
    assert joined[2] == joined[3] < joined[4] < joined[2] + 3
    assert trials[4].user_attrs["population"]["cohort"] == [2, 4]


def test_a_key_that_changes_shapes_is_refused_with_a_population(tiny_data):
    tiny = [f"data.data_dir={tiny_data}", "data.verify=false"]
    hidden = space.load("lr", extra_overrides=tiny, population=4, search_space={
        "model.net.hidden": {"type": "int", "low": 64, "high": 128}})
    with pytest.raises(ConfigError, match="search_space key model.net.hidden .* --population 1"):
        check_vectorizable(hidden, 4)
    with pytest.raises(ConfigError, match="model.net.hidden"):
        population_size(hidden, "cpu")
    check_vectorizable(hidden, 1)
    check_vectorizable(space.load("loss_weights", extra_overrides=tiny), 4)
    base = compose("multihead_cnn_mnist", tiny)
    with pytest.raises(ConfigError, match="data.batch_size differs between members"):
        member_from_config(compose("multihead_cnn_mnist", [*tiny, "data.batch_size=16"]), 0, base)
