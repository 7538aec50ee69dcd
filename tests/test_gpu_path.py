"""The population's GPU path, checked on the CPU (fast tier) and again on CUDA where there is one.

Needs torch and Lightning only (no Hydra, no Optuna), so it also runs on a bare GPU machine:
`python -m pytest -q tests/test_gpu_path.py` (`make gpu-check`). Every test marked with DEVICES
runs on the CPU and, when CUDA is present, on the GPU, its stacked calls under `in_step`: no host
read, no tensor off the device, and on CUDA any synchronising operation raises; float64 makes the
solo comparisons exact to rounding on both (TF32 never applies to float64). The whole population
fit also runs on the meta device, where a tensor left on the CPU is on another device.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from mhtrain import ConfigError
from mhtrain.data.datamodule import MNISTDataModule
from mhtrain.models import MultiheadLitModule, SimpleCNN
from mhtrain.population import Member, train_population
from mhtrain.population.optim import adam_args
from mhtrain.population.stack import StackedNets
from mhtrain.population.stacked import Stack
from tests.device_guards import HostReads, MetaAccelerator, OnDevice, Steps, in_step

ROOT = Path(__file__).resolve().parent.parent
HEADS = {"digit": 10, "thickness": 5, "smoothness": 3}
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
# SimpleCNN's layers at a tenth of the width: the same code paths, seconds less per test
SMALL = partial(SimpleCNN, channels=(4, 8), hidden=16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors this small train faster on one thread; on a busy 2-core machine the second
    thread's spinning made a test 50x slower (7.5 s instead of 0.15 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lit(seed: int, dtype: torch.dtype = torch.float32, dropout: float = 0.0,
        optimizer: type = torch.optim.Adam, weights: dict | None = None, **opt) -> MultiheadLitModule:
    """A member's model with the initial weights its solo run gets for `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = MultiheadLitModule(net=partial(SMALL, dropout=dropout), heads=HEADS,
                                   optimizer=partial(optimizer, **{"lr": 1e-3, **opt}), loss_weights=weights)
    return model.to(dtype)


def joining(stack: Stack, models: list, seeds: list[int]) -> list:
    """What `restack` takes for new members: rows assembled on the host, Adam arguments."""
    dummy = [torch.zeros(1, requires_grad=True)]
    return [(stack.member_rows(m, s), adam_args(m.optimizer_factory(params=dummy)))
            for m, s in zip(models, seeds, strict=True)]


def batch(g: torch.Generator, k: int | None, b: int, dtype: torch.dtype, device: str) -> tuple:
    lead = (b,) if k is None else (k, b)
    x = torch.randn(*lead, 1, 28, 28, generator=g, dtype=dtype).to(device)
    return x, {h: torch.randint(0, c, lead, generator=g).to(device) for h, c in HEADS.items()}


def test_the_device_guard_tells_devices_apart_down_to_the_index():
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake, OnDevice("cuda:0"), pytest.raises(AssertionError, match=r"mixes devices \['cpu', 'cuda:0'\]"):
        torch.ones(2, device="cuda:0") * torch.tensor(2.0)  # torch lets a 0-dim CPU tensor in
    with fake, OnDevice("cuda:0", strict=True), pytest.raises(AssertionError, match="on cuda:1"):
        torch.ones(2, device="cuda:1") * 2
    with fake, OnDevice("cuda:0"), pytest.raises(AssertionError, match="mixes devices"):
        torch.ones(2, device="cuda:1") + torch.ones(2, device="cuda:0")
    with fake, OnDevice("cuda:0"):  # outside a step: host tensors, and copies to the device
        torch.ones(2).to("cuda:0").add_(torch.ones(2, device="cuda:0"))


def test_host_reads_fail_inside_a_step_on_the_cpu_too():
    t = torch.ones(3)
    reads = ("item", lambda: t[0].item()), ("tolist", t.tolist), ("cpu", t.cpu), \
        ("to", lambda: t.to("cpu")), ("float", lambda: float(t[0])), ("bool", lambda: bool(t[0]))
    for name, read in reads:
        with in_step("cpu"), pytest.raises(AssertionError, match=f"host read .{name}"):
            read()
    with HostReads() as outside:
        [read() for _, read in reads]
    assert outside.outside == len(reads)


def test_a_population_on_fake_cuda_keeps_every_tensor_on_the_gpu():
    # No GPU here and no Lightning Trainer on fake tensors (its CUDA accelerator counts real
    # devices), so the stacked steps the PopulationModule calls are driven directly; autograd's
    # engine asks the CUDA driver about every CUDA tensor it meets, so the backward pass is
    # checked on the meta device (next test) and here gradients are made by hand.
    models = [lit(1, dropout=0.25, weight_decay=0.01), lit(2, dropout=0.25), lit(3)]
    stack = Stack(models[0])
    first, later = joining(stack, models[:2], [1, 2]), joining(stack, models[2:], [3])
    with FakeTensorMode(allow_non_fake_inputs=True):
        stack.to("cuda:0")
        g = torch.Generator().manual_seed(0)
        train, val = batch(g, 2, 8, torch.float32, "cpu"), batch(g, None, 8, torch.float32, "cpu")
        train, val = [(x.to("cuda:0"), {h: y.to("cuda:0") for h, y in t.items()}) for x, t in (train, val)]
        with in_step("cuda:0") as (_, guard):
            for keep, lrs, new in (([], [], first), ([1], [5e-4], later)):  # fit start; one leaves, one joins
                stack.restack(keep, lrs, new)
                stack.train(True)
                params = stack.rows["params"]
                stack.train_step(*train, backward=lambda _, p=params: setattr(p, "grad", torch.ones_like(p)))
                stack.train(False)
                stack.val_step(*val)
                for split in ("train", "val"):
                    assert all(v.shape == (2,) for v in stack.epoch_metrics(split).values())
        assert guard.ops > 200
        assert all(v.device.type == "cuda" for v in [*stack.rows.values(), *stack.cols.values()])


def test_a_full_training_step_with_its_backward_stays_on_its_device():
    models = [lit(1, dropout=0.25), lit(2, weight_decay=0.1, optimizer=torch.optim.AdamW)]
    stack = Stack(models[0]).to("meta")
    stack.restack([], [], joining(stack, models, [1, 2]))
    x, targets = batch(torch.Generator().manual_seed(0), 2, 8, torch.float32, "cpu")
    x, targets = x.to("meta"), {h: y.to("meta") for h, y in targets.items()}
    stack.train(True)
    with in_step("meta"):
        stack.train_step(x, targets)  # forward, one criterion call per head, backward, Adam


@pytest.mark.parametrize("device", DEVICES)
def test_n_steps_match_solo_loops(device):
    # BatchNorm running stats, weights (weight decay: Adam's L2 and AdamW's decoupled), Adam
    # moments, dropout masks: each member after N steps is its solo run after N steps
    dt = torch.float64
    models = [lit(1, dt, dropout=0.25, weights={"thickness": 0.5}), lit(2, dt, lr=3e-3, weight_decay=0.1),
              lit(3, dt, dropout=0.25, optimizer=torch.optim.AdamW, lr=2e-3, weight_decay=0.05,
                  betas=(0.8, 0.95))]
    solo = [copy.deepcopy(m).to(device) for m in models]
    stack = Stack(models[0]).to(device)
    stack.restack([], [], joining(stack, models, [1, 2, 3]))
    stack.train(True)
    g = torch.Generator().manual_seed(0)
    batches = [batch(g, 3, 8, dt, device) for _ in range(5)]
    with in_step(device):
        losses = torch.stack([stack.train_step(x, t) for x, t in batches])
    for k, model in enumerate(solo):
        opt = model.optimizer_factory(params=model.parameters())
        model.train()
        for step, (x, t) in enumerate(batches):
            loss = model.training_step((x[k], {h: y[k] for h, y in t.items()}), step)
            torch.testing.assert_close(loss.detach(), losses[step, k], rtol=1e-10, atol=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        row = torch.cat([p.detach().reshape(-1) for p in model.net.parameters()])
        # atol: conv biases before BatchNorm have rounding noise for a gradient, which Adam
        # scales up to ~1e-9 here (a wrong mask, lr or decay moves weights by ~1e-3)
        torch.testing.assert_close(stack.rows["params"][k].detach(), row, rtol=1e-9, atol=1e-8)
        for name, buf in model.net.named_buffers():
            torch.testing.assert_close(stack.buffers[name][k], buf, rtol=1e-9, atol=1e-10)
        state = opt.state[next(iter(model.net.parameters()))]
        torch.testing.assert_close(stack.rows["exp_avg"][k, :state["exp_avg"].numel()],
                                   state["exp_avg"].reshape(-1), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_one_criterion_call_per_head_gives_each_members_mean(device):
    crit = {"digit": nn.CrossEntropyLoss(weight=torch.rand(10) + 0.5, label_smoothing=0.1),
            "thickness": nn.CrossEntropyLoss(ignore_index=2), "smoothness": nn.CrossEntropyLoss()}
    with torch.random.fork_rng(devices=[]):
        model = MultiheadLitModule(net=SMALL, heads=HEADS, optimizer=torch.optim.Adam, criteria=crit)
    stack = Stack(model).to(device)
    g = torch.Generator().manual_seed(0)
    logits = {h: torch.randn(3, 16, c, generator=g).to(device) for h, c in HEADS.items()}
    targets = {h: torch.randint(0, c, (3, 16), generator=g).to(device) for h, c in HEADS.items()}
    with in_step(device):
        losses, correct = stack.losses(logits, targets)
    for i, h in enumerate(HEADS):
        for k in range(3):
            expected = model.criteria[h].to(device)(logits[h][k], targets[h][k])
            torch.testing.assert_close(losses[k, i], expected, rtol=1e-6, atol=1e-7)
            assert correct[k, i] == (logits[h][k].argmax(-1) == targets[h][k]).sum()


def test_a_joining_member_starts_fresh_and_the_survivors_rows_stay_put():
    a, b, c = lit(1, dropout=0.3), lit(2, dropout=0.3, weight_decay=0.1), lit(3, dropout=0.3)
    stack = Stack(a)
    stack.restack([], [], joining(stack, [a, b], [1, 2]))
    stack.train(True)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        stack.train_step(*batch(g, 2, 8, torch.float32, "cpu"))
    before = {k: v[0].detach().clone() for k, v in stack.rows.items() if k != "lr"}
    stack.restack([0], [1e-3], joining(stack, [c], [3]))  # b leaves, c joins
    for key, value in before.items():
        assert torch.equal(stack.rows[key][0], value), key
    fresh = {key: v[1] for key, v in stack.rows.items()}
    assert torch.equal(fresh["params"], torch.cat([p.detach().reshape(-1) for p in c.net.parameters()]))
    assert fresh["step"] == 0 and not fresh["exp_avg"].any() and not fresh["exp_avg_sq"].any()
    for name, buf in c.net.named_buffers():
        assert torch.equal(stack.buffers[name][1], buf), name
    assert [v[1] for k, v in stack.rows.items() if k.endswith(".draws")] == [0]  # no masks drawn yet
    assert stack.rows["weight_decay"].tolist() == [0.0, 0.0] and stack.rows["step"].tolist() == [3.0, 0.0]


def test_dropout_masks_do_not_depend_on_who_trains_beside():
    # member 1 alone, or beside member 2 who leaves for member 3: its masks, so its weights,
    # are the same (a shared random stream, or a reseeding on join, would change them)
    dt, g = torch.float64, torch.Generator().manual_seed(0)
    batches = [batch(g, 2, 8, dt, "cpu") for _ in range(4)]
    one, two = (Stack(lit(1, dt, dropout=0.5)) for _ in range(2))
    one.restack([], [], joining(one, [lit(1, dt, dropout=0.5)], [1]))
    two.restack([], [], joining(two, [lit(1, dt, dropout=0.5), lit(2, dt, dropout=0.5)], [1, 2]))
    for s in (one, two):
        s.train(True)
    for step, (x, t) in enumerate(batches):
        if step == 1:
            two.restack([0], [1e-3], joining(two, [lit(3, dt, dropout=0.5)], [3]))
        one.train_step(x[:1], {h: y[:1] for h, y in t.items()})
        two.train_step(x, t)
    # atol: rounding noise in the conv biases' gradients, scaled up by Adam (other masks: ~1e-2)
    torch.testing.assert_close(two.rows["params"][0], one.rows["params"][0], rtol=1e-9, atol=1e-8)


def test_each_member_draws_its_own_masks_at_its_own_rate():
    nets = [nn.Sequential(nn.Flatten(), nn.Dropout(p)) for p in (0.2, 0.6, 0.2)]
    stacked = StackedNets(nets[0])
    rows = [stacked.row(n, seed) for n, seed in zip(nets, (1, 2, 3), strict=True)]
    buffers = {name: torch.stack([r[1][name] for r in rows]) for name in rows[0][1]}
    stacked.train(True)
    out = stacked.forward(torch.zeros(3, 0), buffers, torch.ones(3, 100, 100))
    dropped = (out == 0).float().mean((1, 2))
    torch.testing.assert_close(dropped, torch.tensor([0.2, 0.6, 0.2]), atol=0.02, rtol=0)
    assert (out[0] != out[2]).any()  # same rate, other seed: other masks
    torch.testing.assert_close(out[1][out[1] != 0], torch.full_like(out[1][out[1] != 0], 2.5))
    stacked.train(False)
    assert torch.equal(stacked.forward(torch.zeros(3, 0), buffers, torch.ones(3, 4, 4)), torch.ones(3, 4, 4))


def test_batchnorm_takes_a_bf16_input_under_vmap():
    # under CUDA's bf16 autocast the convolution before it hands BatchNorm a bf16 tensor while
    # its running stats stay float32: functorch's batching rule refused the mix
    bns = [nn.BatchNorm2d(4) for _ in range(2)]
    stacked = StackedNets(nn.Sequential(*bns[:1]))
    rows = [stacked.row(nn.Sequential(bn), 0) for bn in bns]
    flat = torch.stack([r[0] for r in rows])
    buffers = {name: torch.stack([r[1][name] for r in rows]) for name in rows[0][1]}
    x = torch.randn(2, 8, 4, 5, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    stacked.train(True)
    out = stacked.forward(flat, buffers, x)
    assert out.dtype == torch.bfloat16 and buffers["0.running_mean"].dtype == torch.float32
    for k, bn in enumerate(bns):
        solo = bn(x[k].float())
        torch.testing.assert_close(out[k].float(), solo, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(buffers["0.running_mean"][k], bn.running_mean)


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_autocast_step_trains(device):
    stack = Stack(lit(1)).to(device)
    stack.restack([], [], joining(stack, [lit(1), lit(2)], [1, 2]))
    stack.train(True)
    before = stack.rows["params"].detach().clone()
    x, targets = batch(torch.Generator().manual_seed(0), 2, 8, torch.float32, device)
    with torch.autocast(device, dtype=torch.bfloat16), in_step(device):
        loss = stack.train_step(x, targets)
    assert torch.isfinite(loss).all() and not torch.equal(before, stack.rows["params"])


# -- the population's whole fit path (Lightning module, engine, datamodule) under the guards: on
# the meta device, where anything left on the CPU is on another device, and on this machine's own

class Listed:
    """A MemberSource over fixed members, each running to its end."""

    def __init__(self, members: list[Member]) -> None:
        self.todo, self.results = list(members), {}

    def next(self, free: int) -> list[Member]:
        taken, self.todo = self.todo[:free], self.todo[free:]
        return taken

    def report(self, member, epoch, metrics) -> bool:
        return True

    def finish(self, member, result) -> None:
        self.results[member.key] = result


def guarded_fit(data_dir: Path, device: str) -> tuple[HostReads, Steps, Listed]:
    """Three members, two at a time (the third joins when the second leaves), their learning rates
    halved each epoch by a scheduler, trained with the guards armed inside every step."""
    from torch.optim.lr_scheduler import StepLR

    def member(seed: int, lr: float, epochs: int) -> Member:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            model = MultiheadLitModule(net=partial(SMALL, dropout=0.25), heads=HEADS,
                                       optimizer=partial(torch.optim.Adam, lr=lr),
                                       scheduler=partial(StepLR, step_size=1, gamma=0.5))
        return Member(key=seed, model=model, seed=seed, max_epochs=epochs)

    heads = yaml.safe_load((ROOT / "conf/data/multihead_mnist.yaml").read_text())["heads"]
    data = MNISTDataModule(str(data_dir), heads=heads, verify=False, val_size=32, batch_size=32,
                           train_subset=64)
    trainer = ({"accelerator": MetaAccelerator(), "strategy": SingleDeviceStrategy("meta")}
               if device == "meta" else {"accelerator": device})
    reads, placement = HostReads(), OnDevice(device)
    steps = Steps(reads, placement)
    source = Listed([member(1, 1e-3, 2), member(2, 4e-3, 1), member(3, 2e-3, 1)])
    with reads, placement:
        train_population(data, source, 2, trainer, callbacks=[steps])
    return reads, steps, source


@pytest.mark.parametrize("device", ["meta", DEVICES[-1]])
def test_a_population_fit_reads_nothing_back_in_a_step_and_stays_on_its_device(tiny_data, device):
    reads, steps, source = guarded_fit(tiny_data, device)
    assert sorted(source.results) == [1, 2, 3]
    assert reads.outside > 0  # the epoch boundaries read metrics back, and are counted
    assert steps.placement.ops > 1000 and steps.placement.device == torch.device(device)


def test_a_schedulers_lr_reaches_the_member_rows(tiny_data):
    _, steps, source = guarded_fit(tiny_data, DEVICES[-1])
    assert steps.lrs == [[1e-3, 4e-3], [5e-4, 2e-3]]  # member 3 takes member 2's row
    assert [source.results[k].epochs for k in (1, 2, 3)] == [2, 1, 1]
    assert all(r.stopped == "max_epochs" for r in source.results.values())
    first = source.results[1]
    assert len(first.train_history) == 2 and "train/weight_digit" in first.train_history[0]


def test_a_member_of_another_shape_is_refused():
    stack = Stack(lit(1))
    with torch.random.fork_rng(devices=[]):
        wider = MultiheadLitModule(net=partial(SMALL, hidden=32), heads=HEADS, optimizer=torch.optim.Adam)
    with pytest.raises(ConfigError, match="differs in shape"):
        stack.member_rows(wider, 2)
