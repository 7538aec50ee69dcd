"""model.weighting: fixed loss weights, or per-head weights learned from homoscedastic uncertainty
(the field's other methods: tests/test_mtl_methods.py)."""

import csv
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mhtrain import ConfigError
from mhtrain.config import build_model, compose
from mhtrain.contract import WEIGHTINGS
from mhtrain.models import MultiheadLitModule, SimpleCNN
from mhtrain.train import fit
from tests.conftest import ROOT, tiny_for

HEADS = ("digit", "thickness", "smoothness")


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = {h: torch.randint(0, c, (n,), generator=g) for h, c in zip(HEADS, (10, 5, 3), strict=True)}
    return x, y


def uncertainty_model(*overrides: str) -> MultiheadLitModule:
    return build_model(compose("multihead_cnn_mnist", ["model.weighting=uncertainty", *overrides]))


class Keep(Callback):
    """Holds on to the trained module and its optimizer, as the trainer leaves them."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.model, self.optimizer = pl_module, trainer.optimizers[0]


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Keep, Path]:
    """A short real fit under uncertainty weighting (no test, the last epoch's checkpoint kept)."""
    run = tmp_path_factory.mktemp("uncertainty") / "run"
    cfg = compose("multihead_cnn_mnist", [
        *tiny_for(tiny_data), "trainer.enable_progress_bar=false", f"paths.output_dir={run}",
        "model.weighting=uncertainty", "model.optimizer.lr=0.01", "test=false",
        # no monitor: the checkpoint is the last epoch's, the state the fit ends with
        "callbacks.model_checkpoint.monitor=null", "callbacks.early_stopping=null"])
    keep = Keep()
    fit(cfg, callbacks=[keep])
    return keep, run


def test_uncertainty_total_is_the_documented_formula():
    model = uncertainty_model("model.loss_weights.thickness=0.5", "model.loss_weights.smoothness=2.0").eval()
    s = torch.tensor([0.3, -0.2, 0.7])
    with torch.no_grad():
        model.log_variances.copy_(s)
    x, y = batch()
    logits = model(x)
    ce = torch.nn.functional.cross_entropy
    w = (1.0, 0.5, 2.0)
    expected = sum(w[i] * (torch.exp(-s[i]) * ce(logits[h], y[h]) + s[i] / 2) for i, h in enumerate(HEADS))
    assert torch.allclose(model.training_step((x, y), 0), expected)
    assert model.weights() == pytest.approx({h: w[i] * float(torch.exp(-s[i])) for i, h in enumerate(HEADS)})


def test_every_learned_term_receives_a_gradient():
    model = uncertainty_model()
    model.training_step(batch(), 0).backward()
    assert model.log_variances.grad is not None and (model.log_variances.grad != 0).all()


def test_a_zero_prior_leaves_the_head_and_its_term_out():
    model = uncertainty_model("model.loss_weights.thickness=0")
    model.training_step(batch(), 0).backward()
    thickness = model.net.heads["thickness"].weight.grad
    assert thickness is None or not thickness.any()
    assert model.log_variances.grad[1] == 0 and model.log_variances.grad[[0, 2]].abs().min() > 0
    assert model.weights()["thickness"] == 0.0


def test_learned_terms_are_optimized_and_move_in_a_short_fit(trained):
    keep, _ = trained
    s = keep.model.log_variances
    assert any(p is s for group in keep.optimizer.param_groups for p in group["params"])
    assert (s.detach() != 0).all(), "the log-variances never moved from their start"


def test_weights_are_logged_every_epoch(trained):
    keep, run = trained
    with open(run / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/weight_digit")]
    assert len(rows) == 2  # one per epoch
    for h in HEADS:
        first, last = (float(r[f"train/weight_{h}"]) for r in rows)
        assert first != last
        assert last == pytest.approx(keep.model.weights()[h], rel=1e-6)


def test_checkpoint_round_trips_the_learned_terms(trained):
    keep, run = trained
    (path,) = (run / "checkpoints").glob("*.ckpt")
    state = torch.load(path, weights_only=False)
    assert torch.equal(state["state_dict"]["log_variances"], keep.model.log_variances.detach())
    # the optimizer's state covers the learned terms too, so a resumed fit continues them
    n_params = len(list(keep.model.parameters()))
    assert len(state["optimizer_states"][0]["state"]) == n_params
    fresh = uncertainty_model()
    assert not fresh.log_variances.detach().any()
    fresh.load_state_dict(state["state_dict"])
    assert fresh.weights() == pytest.approx(keep.model.weights())


def test_fixed_weighting_learns_nothing():
    model = build_model(compose("multihead_cnn_mnist"))
    assert model.weighting == "fixed" and model.log_variances is None
    assert model.weights() == {"digit": 1.0, "thickness": 0.5, "smoothness": 0.5}
    assert "log_variances" not in model.state_dict()


def test_unknown_weighting_is_refused_before_work():
    choices = "fixed, uncertainty, dwa, rlw, upgrad, pcgrad"
    with pytest.raises(ConfigError, match=f"model.weighting='learned': must be one of {choices}"):
        MultiheadLitModule(SimpleCNN, {"digit": 10}, torch.optim.Adam, weighting="learned")


def test_help_lists_every_weighting():
    """`python -m mhtrain.train --help` names each model.weighting (the config shows one value)."""
    out = subprocess.run([sys.executable, "-m", "mhtrain.train", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300, check=True).stdout
    (line,) = [x for x in out.splitlines() if x.startswith("model.weighting:")]
    assert [choice.split()[0] for choice in line.split(":", 1)[1].split("|")] == list(WEIGHTINGS)

