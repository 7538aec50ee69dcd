"""Populations: K trials trained as one stacked model give what their solo runs give."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.strategies import SingleDeviceStrategy
from optuna.pruners import ThresholdPruner
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.config import build_model, compose
from mhtrain.contract import metric_names
from mhtrain.data import mnist
from mhtrain.data.datamodule import MemberBatches, MNISTDataModule
from mhtrain.population.check import check_config, population_size, trainer_args
from mhtrain.population.fit import fit_population, member_from_config
from mhtrain.population.optim import adam_args, adam_rows, adam_step
from mhtrain.population.runs import Stopper
from mhtrain.study import opening, study_config, workers
from mhtrain.study.workers import auto_workers
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
        self.configs, self.base, self.results = list(enumerate(configs)), base, {}

    def next(self, free: int) -> list:
        taken, self.configs = self.configs[:free], self.configs[free:]
        return [member_from_config(cfg, i, self.base) for i, cfg in taken]

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


def loss_rtol(device: str) -> float:
    """How far a member's first loss may be from its solo run's: on the CPU only summation order
    differs (1e-4); on CUDA, with TF32 off for the comparison, cuDNN picks different convolution
    algorithms for one model and for K grouped ones (1e-3)."""
    return 1e-4 if device == "cpu" else 1e-3


ACC_GAP = 0.03  # float32: see test_population_trains_each_member_as_its_solo_run


@pytest.fixture
def one_thread():
    """One torch thread: small batches train faster so, and on a busy 2-core machine a spinning
    second thread made tests many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_tf32():
    """Full float32 matmuls and convolutions on CUDA while a test compares numbers."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.mark.slow
def test_population_trains_each_member_as_its_solo_run(bars, tmp_path, no_tf32, one_thread):
    # Dropout on: a member draws its solo run's masks (counter-based in both). In float32 the stacked
    # step rounds differently (grouped convolutions, one criterion call over K*B samples), and
    # Adam turns the rounding noise that is the whole gradient of a conv bias before BatchNorm
    # into lr-sized steps: after an epoch a member's val accuracy is within ACC_GAP of its solo
    # run's, not equal to it (1.8 points seen here). tests/test_gpu_path.py checks exactness in
    # float64. On CUDA, TF32 is off for the comparison.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = [f"data.data_dir={bars}", "data.verify=false", "data.val_size=500", "data.batch_size=32",
              "trainer.max_epochs=1", "test=false", "callbacks.model_checkpoint=null",
              "++trainer.enable_checkpointing=false", "trainer.enable_progress_bar=false",
              "model.net.dropout=0.25"]
    configs = [compose("multihead_cnn_mnist", [*common, *t, f"paths.output_dir={tmp_path}/pop{i}"])
               for i, t in enumerate(TRIALS)]
    solo_loss, solo = [], []
    for i, t in enumerate(TRIALS):
        first = FirstLoss()
        solo.append(fit(compose("multihead_cnn_mnist", [*common, *t, f"paths.output_dir={tmp_path}/solo{i}"]),
                        callbacks=[first]))
        solo_loss.append(first.loss)

    first, source = FirstLoss(), Listed(configs, compose("multihead_cnn_mnist", [*common, *TRIALS[0]]))
    assert fit_population(source.base, source, 3, callbacks=[first]) == 3
    assert torch.allclose(first.loss, torch.stack(solo_loss), rtol=loss_rtol(device), atol=0)
    for i in range(3):
        member = source.results[i]
        acc = member.best["val/digit_acc"]
        assert abs(acc - solo[i].best["val/digit_acc"]) <= ACC_GAP, (i, acc, solo[i].best)
        assert 0.2 < acc < 0.99  # learning (chance: 0.1), and not so easy that every run agrees anyway
        assert member.epochs == 1 and member.params == 422_866 and member.stopped == "max_epochs"
        assert member.population == {"joined_epoch": 0, "members": 3} and member.test == {}
        assert set(member.train_history[0]) == set(solo[i].train_history[0])  # the same keys
        assert set(member.history[0]) == set(solo[i].history[0])
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


@pytest.mark.slow
def test_members_leave_and_join_within_an_exact_budget(tiny_data, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    study = study_config.load("lr", extra_overrides=[
        f"data.data_dir={tiny_data}", "data.verify=false", "data.val_size=100", "data.batch_size=32",
        "trainer.max_epochs=3", "callbacks.early_stopping=null"], n_trials=5, population=2,
        search_space={"model.optimizer.lr": {"type": "float", "low": 1e-8, "high": 1e-1, "log": True}})
    ostudy = opening.open_study(study, f"sqlite:///{tmp_path / 'optuna.db'}")
    ostudy.pruner = ThresholdPruner(lower=0.5)  # a chance-level epoch is pruned at once
    for lr in (3e-3, 3e-3, 3e-3, 1e-7, 1e-7):  # 1e-7: inside the space above, so it is used
        ostudy.enqueue_trial({"model.optimizer.lr": lr})
    workers.work(study, ostudy)

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


def on_gpu(cfg):
    """`cfg` asking for a GPU (set after composing: the config check builds a Trainer, which
    needs the GPU to be there)."""
    cfg.trainer.accelerator = "gpu"
    return cfg


def test_a_key_that_changes_shapes_is_refused_with_a_population(tiny_data):
    tiny = [f"data.data_dir={tiny_data}", "data.verify=false", "callbacks.model_checkpoint=null"]
    base = compose("multihead_cnn_mnist", tiny)
    with pytest.raises(ConfigError, match="search_space key model.net.hidden .* use population=1"):
        population_size(4, base, ["model.optimizer.lr", "model.net.hidden"], False)
    gpu = on_gpu(compose("multihead_cnn_mnist", tiny))
    k, why = population_size("auto", gpu, ["model.net.hidden"], False)
    assert k == 1 and why.startswith("auto -> 1 on cuda: search_space key model.net.hidden")
    assert population_size(1, base, ["model.net.hidden"], False) == (1, "1 as asked")
    varying = ["model.optimizer.lr", "model.loss_weights.digit"]
    assert population_size(4, base, varying, False) == (4, "4 as asked")
    with pytest.raises(ConfigError, match="data.batch_size differs between members"):
        member_from_config(compose("multihead_cnn_mnist", [*tiny, "data.batch_size=16"]), 0, base)


def test_auto_follows_the_accelerator_and_refusals_name_the_key(tiny_data):
    tiny = [f"data.data_dir={tiny_data}", "data.verify=false"]
    lr = ["model.optimizer.lr"]

    def size(requested, *overrides, keep=False, gpu=False):
        ckpt = [] if overrides == ("checkpoints",) else ["callbacks.model_checkpoint=null", *overrides]
        base = compose("multihead_cnn_mnist", [*tiny, *ckpt])
        return population_size(requested, on_gpu(base) if gpu else base, lr, keep)

    # cpu -> 1 even where CUDA exists; an accelerator asking for a GPU -> 32
    assert size("auto", "trainer.accelerator=cpu") == (
        1, "auto -> 1 on the CPU (a 2-member vmap step measured slower than two plain steps)")
    k, why = size("auto", gpu=True)
    assert k == 32 and why.startswith("auto -> 32 on cuda")
    assert size("auto", gpu=True, keep=True)[0] == 1
    refusals = {"trainer.devices": ["trainer.devices=2"],
                "trainer.precision": ["++trainer.precision=16-mixed"],
                "trainer.accumulate_grad_batches": ["++trainer.accumulate_grad_batches=2"],
                "model.optimizer is SGD": ["model.optimizer._target_=torch.optim.SGD"],
                "model.criteria.digit is MSELoss": ["+model.criteria.digit._target_=torch.nn.MSELoss"],
                "callbacks.early_stopping.monitor=val/nope": ["callbacks.early_stopping.monitor=val/nope"],
                "callbacks.model_checkpoint": ["checkpoints"]}
    for key, overrides in refusals.items():
        with pytest.raises(ConfigError, match=f"^{key}") as e:
            size(2, *overrides)
        assert "\n" not in str(e.value)
    # the default `devices: auto` is pinned to one device, bf16 autocast is allowed
    for ok in (["trainer.devices=auto"], ["++trainer.precision=bf16-mixed"]):
        check_config(compose("multihead_cnn_mnist", [*tiny, *ok, "callbacks.model_checkpoint=null"]))


def test_joining_leaves_every_global_rng_stream_alone(tiny_data, tmp_path):
    cfg = compose("multihead_cnn_mnist", [f"data.data_dir={tiny_data}", "data.verify=false",
                                          f"paths.output_dir={tmp_path}", "seed=7",
                                          "callbacks.model_checkpoint=null"])
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    member = member_from_config(cfg, 0)
    assert torch.equal(torch.get_rng_state(), cpu)
    for before, after in zip(cuda, torch.cuda.get_rng_state_all() if cuda else [], strict=True):
        assert torch.equal(before, after)  # torch.manual_seed would have reseeded every GPU
    torch.manual_seed(7)  # the solo run's initial weights
    for a, b in zip(member.model.parameters(), build_model(cfg).parameters(), strict=True):
        assert torch.equal(a, b)


class Scripted(L.LightningModule):
    """Logs a scripted `val/loss` each epoch and learns nothing: drives a real EarlyStopping."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values, self.w = values, torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * batch).sum()  # batch: a [1] tensor

    def validation_step(self, batch, batch_idx) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.values[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.ones(1, 1)

    def val_dataloader(self):
        return torch.ones(1, 1)


@pytest.mark.parametrize(("settings", "values"), [
    ({"mode": "min", "patience": 2}, [1.0, 0.9, 0.95, 0.92, 0.8, 0.85, 0.86, 0.7]),
    ({"mode": "max", "patience": 1, "min_delta": 0.05}, [0.5, 0.52, 0.6, 0.61, 0.7, 0.9]),
    ({"mode": "max", "patience": 5, "stopping_threshold": 0.9}, [0.5, 0.7, 0.95, 0.96]),
    ({"mode": "min", "patience": 5, "divergence_threshold": 5.0}, [1.0, 2.0, 6.0, 0.5]),
    ({"mode": "min", "patience": 5}, [1.0, float("nan"), 0.5, 0.4]),
    ({"mode": "min", "patience": 0}, [1.0, 0.9, 0.95, 0.7]),
    ({"mode": "max", "patience": 1}, [0.1, 0.2, 0.3, 0.4]),  # never stops
])
def test_a_members_early_stopping_stops_where_lightnings_would(settings, values):
    trainer = L.Trainer(max_epochs=len(values), callbacks=[EarlyStopping(monitor="val/loss", **settings)],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(Scripted(values))
    stopper = Stopper(EarlyStopping(monitor="val/loss", **settings))
    epochs = next((epoch + 1 for epoch, v in enumerate(values) if stopper.should_stop(v)), len(values))
    assert epochs == trainer.current_epoch


def test_early_stopping_other_than_lightnings_is_refused():
    class Patient(EarlyStopping):
        pass

    with pytest.raises(ConfigError, match="callbacks.early_stopping is Patient"):
        Stopper(Patient(monitor="val/loss"))


def test_a_population_runs_on_one_device():
    assert trainer_args({"devices": "auto", "accelerator": "auto"})["devices"] == 1
    assert trainer_args({"_target_": "lightning.Trainer"}) == {"devices": 1}
    for one in (1, "1", [3], "2,"):
        assert trainer_args({"devices": one})["devices"] == one
    for many in (2, -1, "-1", [0, 1], "0,1"):
        with pytest.raises(ConfigError, match=r"^trainer.devices=.* one device"):
            trainer_args({"devices": many})
    with pytest.raises(ConfigError, match="^trainer.strategy"):
        trainer_args({"strategy": "ddp"})
    one = SingleDeviceStrategy("cpu")  # names its one device
    assert trainer_args({"strategy": one})["strategy"] is one


def test_members_from_configs_end_with_their_fit_results(tiny_data, tmp_path, one_thread):
    # a member with max_epochs=1 leaves after its first epoch and the third takes its slot
    common = [f"data.data_dir={tiny_data}", "data.verify=false", "data.val_size=64", "data.batch_size=32",
              "data.train_subset=128", "test=false", "callbacks.model_checkpoint=null",
              "trainer.enable_progress_bar=false"]
    epochs = (1, 2, 1)
    configs = [compose("multihead_cnn_mnist", [*common, f"seed={i}", f"trainer.max_epochs={e}",
                                               f"paths.output_dir={tmp_path}/m{i}"])
               for i, e in enumerate(epochs)]
    source = Listed(configs, compose("multihead_cnn_mnist", common))
    assert fit_population(source.base, source, 2) == 3
    joined = [source.results[i].population for i in range(3)]
    assert joined == [{"joined_epoch": 0, "members": 2}, {"joined_epoch": 0, "members": 2},
                      {"joined_epoch": 1, "members": 2}]
    for i, e in enumerate(epochs):
        result = source.results[i]
        assert result.epochs == len(result.train_history) == e and result.stopped == "max_epochs"
        assert result.best["val/digit_acc"] == max(h["val/digit_acc"] for h in result.history)
        assert (tmp_path / f"m{i}" / "config.yaml").exists()
        with open(tmp_path / f"m{i}" / "csv" / "metrics.csv") as f:
            assert len(list(csv.reader(f))) == 1 + 2 * e


def test_workers_auto_counts_gpus_only_for_a_study_that_trains_on_them():
    # a CPU study on an 8-GPU machine started 8 workers sharing the cores
    eight = [str(i) for i in range(8)]
    for accelerator in ("cpu", "CPU", "mps"):
        assert auto_workers(accelerator, gpus=eight) == 1
    for accelerator in ("gpu", "cuda", "auto", None):
        assert auto_workers(accelerator, gpus=eight) == 8
    assert auto_workers("auto", gpus=[]) == auto_workers("gpu", gpus=[]) == 1
