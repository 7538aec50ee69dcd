import pytest
import torch

from mhtrain import ConfigError
from mhtrain.config import build_model, compose
from mhtrain.contract import metric_names
from mhtrain.models import MultiheadLitModule, SimpleCNN


def build(experiment: str, *overrides: str) -> MultiheadLitModule:
    return build_model(compose(experiment, overrides))


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_and_output_shapes():
    mh, single = build("multihead_cnn_mnist"), build("cnn_mnist")
    assert n_params(mh) == 422_866
    assert n_params(single) == 421_834
    out = mh(torch.zeros(5, 1, 28, 28))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "digit": (5, 10), "thickness": (5, 5), "smoothness": (5, 3)}
    assert set(single(torch.zeros(2, 1, 28, 28))) == {"digit"}


def test_architecture_is_config():
    net = SimpleCNN({"a": 4}, in_channels=3, input_size=32, channels=[8, 16], hidden=32)
    assert net(torch.zeros(2, 3, 32, 32))["a"].shape == (2, 4)


def test_zero_weight_head_gets_no_gradient():
    model = build("multihead_cnn_mnist", "model.loss_weights.thickness=0")
    x = torch.randn(8, 1, 28, 28)
    y = {"digit": torch.randint(0, 10, (8,)), "thickness": torch.randint(0, 5, (8,)),
         "smoothness": torch.randint(0, 3, (8,))}
    model.training_step((x, y), 0).backward()
    thickness = model.net.heads["thickness"].weight.grad
    assert thickness is None or not thickness.any()
    assert model.net.heads["smoothness"].weight.grad.abs().sum() > 0


def test_total_loss_is_the_weighted_sum():
    model = build("multihead_cnn_mnist", "model.loss_weights.smoothness=2.0").eval()
    x = torch.randn(16, 1, 28, 28)
    y = {"digit": torch.randint(0, 10, (16,)), "thickness": torch.randint(0, 5, (16,)),
         "smoothness": torch.randint(0, 3, (16,))}
    logits = model(x)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(logits["digit"], y["digit"]) + 0.5 * ce(logits["thickness"], y["thickness"])
                + 2.0 * ce(logits["smoothness"], y["smoothness"]))
    assert torch.allclose(model.training_step((x, y), 0), expected)  # eval mode: no dropout


def test_criterion_by_target():
    model = build("multihead_cnn_mnist",
                  "+model.criteria.thickness._target_=torch.nn.CrossEntropyLoss",
                  "+model.criteria.thickness.label_smoothing=0.2")
    assert model.criteria["thickness"].label_smoothing == 0.2
    assert model.criteria["digit"].label_smoothing == 0.0


@pytest.mark.parametrize(("overrides", "message"), [
    (["+model.loss_weights.colour=1.0"], r"loss_weights has \['colour'\]"),
    (["model.loss_weights.digit=-1"], "must be >= 0"),
    (["model.loss_weights.digit=0", "model.loss_weights.thickness=0",
      "model.loss_weights.smoothness=0"], "all zero"),
    (["optimized_metric=val/colour_acc"], "optimized_metric=val/colour_acc is not logged"),
    (["data.heads.thickness.classes=2"], "outside"),
    # what torch and Lightning refuse when the objects are built, refused when composing
    (["model.net.dropout=1.5"], "model cannot be built.*dropout probability"),
    (["trainer.accelerator=quantum"], "trainer cannot be built.*quantum"),
    (["+trainer.gradient_clip_algorithm=sideways"], "trainer cannot be built.*sideways"),
])
def test_rejected_at_composition(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose("multihead_cnn_mnist", overrides)


def test_single_task_cannot_optimize_an_auxiliary_head():
    with pytest.raises(ConfigError, match="not logged"):
        compose("cnn_mnist", ["optimized_metric=val/thickness_acc"])
    with pytest.raises(ConfigError, match="thickness"):
        compose("cnn_mnist", ["+model.loss_weights.thickness=0.5"])


def test_module_rejects_at_construction():
    kw = {"net": SimpleCNN, "heads": {"digit": 10}, "optimizer": torch.optim.Adam}
    with pytest.raises(ConfigError, match=r"criteria has \['colour'\]"):
        MultiheadLitModule(**kw, criteria={"colour": torch.nn.MSELoss()})
    with pytest.raises(ConfigError, match=r"loss_weights has \['colour'\]"):
        MultiheadLitModule(**kw, loss_weights={"colour": 1.0})
    with pytest.raises(ConfigError, match=">= 0"):
        MultiheadLitModule(**kw, loss_weights={"digit": -0.1})


def test_unknown_criterion_head_rejected_at_composition():
    with pytest.raises(ConfigError, match="criteria"):
        compose("cnn_mnist", ["+model.criteria.colour._target_=torch.nn.MSELoss"])


def test_metric_contract_names():
    names = metric_names(["digit", "thickness"])
    for split in ("train", "val", "test"):
        assert {f"{split}/digit_acc", f"{split}/thickness_loss", f"{split}/loss",
                f"{split}/avg_acc", f"{split}/weighted_acc"} <= set(names)
    assert "val/acc_best" in names
    assert "val/avg_acc" not in metric_names(["digit"])


def test_dropout_masks_follow_the_runs_seed_and_step_only():
    # a solo run's masks come from its seed and step count, not from torch's global random
    # stream, so a population member built from the same seed draws the very same masks
    def masks(seed: int, noise: int) -> torch.Tensor:
        torch.manual_seed(seed)  # as `fit` seeds a run before building its model
        model = build("multihead_cnn_mnist").train()  # dropout 0.25
        torch.manual_seed(noise)  # anything else drawing from the global stream
        drop = model.net.backbone[-1]
        return torch.stack([drop(torch.ones(64, 128)) == 0 for _ in range(3)])

    a = masks(5, 0)
    assert torch.equal(a, masks(5, 1)) and not torch.equal(a, masks(6, 0))
    assert not torch.equal(a[0], a[1])  # a new mask every step
    assert 0.2 < a.float().mean() < 0.3
