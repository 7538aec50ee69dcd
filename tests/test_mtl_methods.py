"""model.weighting=dwa, rlw, upgrad, pcgrad: each trains the real tiny model, each combined gradient
is its reference formula on a two-head toy problem, a population refuses each by name, and each
study config runs a tiny trial end to end."""

import copy
import math
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from mhtrain import ConfigError
from mhtrain.config import compose
from mhtrain.contract import WEIGHTINGS, metric_names
from mhtrain.models import MultiheadLitModule
from mhtrain.models.weighting import STEPPED, dwa_weights, rlw_weights
from mhtrain.population.check import check_model, population_size
from mhtrain.study import runner, study_config
from mhtrain.train import fit
from tests.conftest import tiny_for

METHODS = ("dwa", "rlw", "upgrad", "pcgrad")
STUDIES = {m: f"{m}_lr" for m in METHODS}


def test_the_methods_are_the_stepped_weightings():
    assert set(STEPPED) == set(METHODS) and set(WEIGHTINGS) == {"fixed", "uncertainty", *METHODS}


# --- each method trains the tiny model -------------------------------------------------------

@pytest.fixture(scope="module")
def fits(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real fit per method, 2 epochs (DWA 3: its weights leave 1 in the third); the default
    loss weights 1/0.5/0.5."""
    out = {}
    for method in METHODS:
        run = tmp_path_factory.mktemp(method) / "run"
        cfg = compose("multihead_cnn_mnist", [
            *tiny_for(tiny_data, epochs=3 if method == "dwa" else 2), "trainer.enable_progress_bar=false",
            f"paths.output_dir={run}",
            f"model.weighting={method}", "model.optimizer.lr=0.003", "test=false",
            "callbacks.model_checkpoint=null", "callbacks.early_stopping=null"])
        out[method] = fit(cfg)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_the_tiny_model_under_the_metric_contract(fits, method):
    result = fits[method]
    heads = ["digit", "thickness", "smoothness"]
    assert result.epochs == (3 if method == "dwa" else 2) and result.stopped == "max_epochs"
    assert set(metric_names(heads, ("val",))) <= set(result.history[-1])
    assert set(metric_names(heads, ("train",))) <= set(result.train_history[-1])
    assert result.best["val/digit_acc"] > 0.5  # chance is 0.1; the tiny digits are learnable
    assert result.train_history[-1]["train/loss"] < result.train_history[0]["train/loss"]
    # the logged loss is the loss_weights' sum, whatever the method trained on
    for row in (*result.history, *result.train_history):
        split = next(iter(row)).split("/")[0]
        plain = sum(w * row[f"{split}/{h}_loss"] for h, w in zip(heads, (1.0, 0.5, 0.5), strict=True))
        assert row[f"{split}/loss"] == pytest.approx(plain, rel=1e-5)


def test_each_method_logs_the_weights_it_used(fits):
    weights = {m: [[r[f"train/weight_{h}"] for h in ("digit", "thickness", "smoothness")]
                   for r in fits[m].train_history] for m in METHODS}
    priors = [1.0, 0.5, 0.5]
    assert weights["dwa"][0] == weights["dwa"][1] == pytest.approx(priors)  # no two epochs to compare yet
    # epoch 3: K·softmax(r/T) of the logged mean training losses' ratios, epoch 2 over epoch 1
    first, second = ([row[f"train/{h}_loss"] for h in ("digit", "thickness", "smoothness")]
                     for row in fits["dwa"].train_history[:2])
    r = torch.tensor(second) / torch.tensor(first)
    lam = 3 * torch.softmax(r / 2.0, 0)
    assert weights["dwa"][2] == pytest.approx((lam * torch.tensor(priors)).tolist(), rel=1e-5)
    assert lam.tolist() != pytest.approx([1.0] * 3)
    for epoch in weights["rlw"]:  # a mean of softmax draws: each near 1/3, summing to 1 before priors
        assert sum(w / p for w, p in zip(epoch, priors, strict=True)) == pytest.approx(1.0)
        assert all(0.15 < w / p < 0.55 for w, p in zip(epoch, priors, strict=True))
    assert all(w > 0.0 for epoch in weights["upgrad"] for w in epoch)
    assert weights["upgrad"][0] != pytest.approx(priors)
    # PCGrad only adds to a row's weight of 1 (a conflicting projection), so its mean is >= the prior
    assert all(w >= p - 1e-6 for epoch in weights["pcgrad"] for w, p in zip(epoch, priors, strict=True))


# --- each combined gradient is its reference formula, on a two-head toy problem ----------------

class Toy(nn.Module):
    """A linear shared layer and two linear heads: a gradient method's contract, nothing else."""

    def __init__(self, heads, in_channels=1, input_size=2):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size ** 2, 3))
        self.heads = nn.ModuleDict({h: nn.Linear(3, n) for h, n in heads.items()})

    def forward_with_features(self, x):
        features = self.backbone(x)
        return {h: head(features) for h, head in self.heads.items()}, features

    def forward(self, x):
        return self.forward_with_features(x)[0]


def toy(method: str, seed: int, **kwargs) -> tuple[MultiheadLitModule, tuple]:
    torch.manual_seed(seed)
    model = MultiheadLitModule(Toy, {"a": 2, "b": 2}, torch.optim.SGD, input_shape=(1, 2, 2),
                               weighting=method, seed=seed, **kwargs)
    x = torch.randn(8, 1, 2, 2)
    return model, (x, {"a": torch.randint(0, 2, (8,)), "b": torch.randint(0, 2, (8,))})


def head_gradients(model: MultiheadLitModule, batch) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Each head's prior-weighted gradient on the shared layer (flat) and on its own head."""
    x, y = batch
    logits = model.net(x)
    priors = model.priors.tolist()
    losses = [w * nn.functional.cross_entropy(logits[h], y[h]) for w, h in zip(priors, "ab", strict=True)]
    shared = list(model.net.backbone.parameters())
    g = [torch.cat([t.flatten() for t in torch.autograd.grad(loss, shared, retain_graph=True)])
         for loss in losses]
    own = [torch.autograd.grad(loss, list(model.net.heads[h].parameters()), retain_graph=True)
           for loss, h in zip(losses, "ab", strict=True)]
    return g[0], g[1], own


def combined(model: MultiheadLitModule, batch) -> torch.Tensor:
    """The method's step as Lightning takes it: training_step, then the module's backward."""
    model.zero_grad()
    model.backward(model.training_step(batch, 0))
    return torch.cat([p.grad.flatten() for p in model.net.backbone.parameters()])


def conflicting(method: str, conflict: bool, **kwargs):
    """The first toy seed whose two head gradients conflict (dot < 0), or do not."""
    for seed in range(100):
        model, batch = toy(method, seed, **kwargs)
        g1, g2, own = head_gradients(model, batch)
        if (g1 @ g2 < 0) == conflict:
            return model, batch, g1, g2, own
    raise AssertionError("no toy seed found")


def project(g: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """g without its component along `on` when the two conflict (PCGrad's surgery)."""
    return g - (g @ on) / (on @ on) * on if g @ on < 0 else g


@pytest.mark.parametrize("conflict", [True, False])
def test_pcgrad_is_the_sum_of_the_projected_head_gradients(conflict):
    model, batch, g1, g2, own = conflicting("pcgrad", conflict, loss_weights={"b": 0.7})
    expected = project(g1, g2) + project(g2, g1)
    assert torch.allclose(combined(model, batch), expected, atol=1e-6)
    if conflict:
        assert not torch.allclose(expected, g1 + g2, atol=1e-4)
    for h, grads in zip("ab", own, strict=True):  # each head's layers: its own gradient, untouched
        for p, ref in zip(model.net.heads[h].parameters(), grads, strict=True):
            assert torch.allclose(p.grad, ref, atol=1e-6)


@pytest.mark.parametrize("conflict", [True, False])
def test_upgrad_opposes_no_head_and_is_half_pcgrad_for_two_heads(conflict):
    """UPGrad averages each head's gradient projected onto the dual cone of both; for two heads
    that projection is PCGrad's, so the result is half of PCGrad's (up to torchjd's regularisation)."""
    model, batch, g1, g2, own = conflicting("upgrad", conflict, loss_weights={"b": 0.7})
    step = combined(model, batch)
    for g in (g1, g2):
        assert step @ g >= -1e-6 * step.norm() * g.norm()
    expected = (project(g1, g2) + project(g2, g1)) / 2
    assert torch.allclose(step, expected, rtol=1e-3, atol=1e-4 * expected.norm())
    for h, grads in zip("ab", own, strict=True):
        for p, ref in zip(model.net.heads[h].parameters(), grads, strict=True):
            assert torch.allclose(p.grad, ref, atol=1e-6)


@pytest.mark.parametrize("method", ["upgrad", "pcgrad"])
def test_a_head_weighing_zero_takes_no_part_in_the_aggregation(method):
    model, batch = toy(method, 0, loss_weights={"b": 0.0})
    g1, _, _ = head_gradients(model, batch)
    assert torch.allclose(combined(model, batch), g1, atol=1e-5)  # one row: aggregated, it is itself
    assert all(p.grad is None for p in model.net.heads["b"].parameters())
    assert model.weights()["b"] == 0.0


def test_dwa_weighs_by_the_softmax_of_loss_ratios_over_the_temperature():
    model, batch = toy("dwa", 0, dwa_temperature=0.5, loss_weights={"b": 0.7})
    history = torch.tensor([[1.0, 2.0], [0.6, 1.9]])  # head a falls faster: it weighs less
    for epoch in history:  # two epochs end with these mean training losses
        model.stepped.end_epoch(epoch)
    g1, g2, own = head_gradients(model, batch)
    r = history[1] / history[0]
    lam = 2 * torch.exp(r / 0.5) / torch.exp(r / 0.5).sum()
    assert torch.allclose(combined(model, batch), lam[0] * g1 + lam[1] * g2, atol=1e-6)
    assert model.weights() == pytest.approx({"a": float(lam[0]), "b": 0.7 * float(lam[1])})
    assert lam[0] < 1 < lam[1]


def test_dwa_weights_match_torchjds_dwa_and_start_uniform():
    from torchjd.scalarization import DWA

    epochs = [torch.tensor([2.0, 1.0, 0.5]), torch.tensor([1.5, 0.9, 0.45]), torch.tensor([1.0, 0.85, 0.3])]
    every = torch.ones(3, dtype=torch.bool)
    history = torch.full((2, 3), float("nan"))
    reference = DWA(temperature=2.0)
    for mean in epochs:
        values = torch.ones(3, requires_grad=True)
        copy.deepcopy(reference)(values).backward()  # d(Σ λ·v)/dv = λ, the reference's weights now
        assert torch.allclose(dwa_weights(history, 2.0, every), values.grad)
        reference(mean)  # this epoch's mean losses (one batch each) close the epoch
        reference.step()
        history = torch.stack([history[1], mean])
    assert torch.equal(dwa_weights(torch.full((2, 3), float("nan")), 2.0, every), torch.ones(3))
    # a head weighing 0 takes no part: K counts the others and the softmax runs over them
    some = torch.tensor([True, False, True])
    w = dwa_weights(history, 2.0, some)
    assert w[1] == 0 and w.sum() == pytest.approx(2.0)


def test_rlw_weighs_each_step_by_its_draw():
    model, batch = toy("rlw", 3, loss_weights={"b": 0.7})
    g1, g2, _ = head_gradients(model, batch)
    w = rlw_weights(2, 3, 0)  # seed 3, step 0: what the step draws
    assert torch.allclose(combined(model, batch), w[0] * g1 + w[1] * g2, atol=1e-6)
    assert model.weights() == pytest.approx({"a": float(w[0]), "b": 0.7 * float(w[1])})


def test_rlw_weights_are_a_softmax_of_standard_normal_draws():
    draws = torch.stack([rlw_weights(2, 7, step) for step in range(4000)])
    assert torch.allclose(draws.sum(1), torch.ones(4000)) and (draws > 0).all()
    z = draws[:, 0].log() - draws[:, 1].log()  # z1 - z2 ~ N(0, 2) for softmax(z), z ~ N(0, I)
    assert abs(z.mean()) < 0.1 and abs(z.var() - 2.0) < 0.2
    assert abs((z.abs() < math.sqrt(2)).float().mean() - 0.6827) < 0.03  # normal, not uniform
    assert torch.equal(rlw_weights(2, 7, 5), draws[5]) and not torch.equal(rlw_weights(2, 8, 5), draws[5])


def test_a_scaled_loss_scales_a_gradient_methods_step():
    """Lightning divides the loss by the accumulated batches (or scales it for AMP) before
    `backward`: the aggregated step must scale with it, as a plain backward's would."""
    model, batch, *_ = conflicting("pcgrad", True)
    plain = combined(model, batch)
    model.zero_grad()
    model.backward(model.training_step(batch, 0) / 4)
    assert torch.allclose(torch.cat([p.grad.flatten() for p in model.net.backbone.parameters()]), plain / 4,
                          atol=1e-7)


# --- refusals ----------------------------------------------------------------------------------

def test_a_non_positive_dwa_temperature_is_refused_before_work(tiny_data):
    with pytest.raises(ConfigError, match=r"model.dwa_temperature=0: must be > 0"):
        compose("multihead_cnn_mnist",
                [*tiny_for(tiny_data), "model.weighting=dwa", "model.dwa_temperature=0"])


def test_a_gradient_method_needs_the_features_the_heads_share():
    class Plain(nn.Module):
        def __init__(self, heads, in_channels=1, input_size=2):
            super().__init__()
            n_in = in_channels * input_size ** 2
            self.heads = nn.ModuleDict({h: nn.Linear(n_in, n) for h, n in heads.items()})

    with pytest.raises(ConfigError, match="model.weighting=upgrad .* Plain has no forward_with_features"):
        MultiheadLitModule(Plain, {"a": 2}, torch.optim.SGD, input_shape=(1, 2, 2), weighting="upgrad")


def on_gpu(cfg):
    cfg.trainer.accelerator = "gpu"  # set after composing: the config check builds a Trainer
    return cfg


@pytest.mark.parametrize("method", METHODS)
def test_a_population_refuses_each_method_by_name_and_auto_falls_back_to_solo(tiny_data, tiny, method):
    base = compose("multihead_cnn_mnist", [f"data.data_dir={tiny_data}", "data.verify=false",
                                           "callbacks.model_checkpoint=null", f"model.weighting={method}"])
    varying = [p.key for p in study_config.load(STUDIES[method], extra_overrides=tiny).search_space]
    line = f"model.weighting={method} .*; a population trains fixed loss weights: use population=1"
    with pytest.raises(ConfigError, match=line) as refused:
        population_size(4, base, varying, False)
    assert "\n" not in str(refused.value)
    k, why = population_size("auto", on_gpu(base), varying, False)
    assert k == 1 and why.startswith(f"auto -> 1 on cuda: model.weighting={method} ")
    with pytest.raises(ConfigError, match=line):  # a member built by hand is refused the same way
        check_model(MultiheadLitModule(Toy, {"a": 2}, torch.optim.SGD, input_shape=(1, 2, 2),
                                       weighting=method), ["a"], None)


# --- each method's study runs one tiny trial end to end ----------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_each_method_study_runs_a_tiny_trial(method, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = study_config.load(STUDIES[method], n_trials=1,
                       extra_overrides=[*tiny, "trainer.max_epochs=1", "data.train_subset=128"])
    assert study.population == 1 and f"model.weighting={method}" in study.overrides
    ostudy, _ = runner.run(study, f"sqlite:///{tmp_path / 'optuna.db'}", progress=False)
    (trial,) = ostudy.get_trials()
    assert trial.state == TrialState.COMPLETE and 0.0 <= trial.value <= 1.0
    assert set(trial.params) == {p.key for p in study.search_space}
    assert f"model.weighting={method}" in trial.user_attrs["overrides"]
