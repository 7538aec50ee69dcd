"""Can these trials train stacked? The one answer for the study, `fit_population`, each joining
member and the stacked network: a one-line `ConfigError` naming the key, before any work. Members
share tensor shapes and the batch loop; only quantities carried as per-member rows may vary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn

from mhtrain import ConfigError
from mhtrain.contract import metric_names
from mhtrain.models.weighting import ABOUT

if TYPE_CHECKING:  # configs need Hydra, which a bare accelerator machine may lack
    from omegaconf import DictConfig

USE_ONE = "use population=1"
# What may differ between members: values that leave tensor shapes and the batch loop alone
# (a key ending in "." covers everything under it). Anything else is the same for all members.
VARYING = ("seed", "model.optimizer.", "model.loss_weights.", "model.net.dropout",
           "model.scheduler.", "model.scheduler_monitor", "callbacks.early_stopping.",
           "trainer.max_epochs", "trainer.min_epochs", "optimized_metric", "paths.output_dir",
           "logger.", "tags", "task_name")
# Trainer settings a population honours only at these values (when set): validate every epoch,
# step every batch with the whole gradient, float32 or bf16 autocast, one device
TRAINER_FIXED: dict[str, tuple[Any, ...]] = {
    "check_val_every_n_epoch": (1,), "val_check_interval": (None, 1, 1.0),
    "accumulate_grad_batches": (None, 1), "gradient_clip_val": (None, 0, 0.0),
    "fast_dev_run": (None, False, 0), "num_nodes": (None, 1), "strategy": (None, "auto"),
    "max_steps": (None, -1), "precision": (None, 32, "32", "32-true", "bf16-mixed")}
# K for `auto` per device type and why (bench/population.py on a 2-core CPU and H100/H200;
# re-measure before changing)
AUTO_K = {"cpu": 1, "cuda": 32}
AUTO_WHY = {"cpu": "a 2-member vmap step measured slower than two plain steps",
            "cuda": "H100/H200 step timings: ~10x the samples/s of one model"}
# Layers whose randomness or state a stacked member cannot carry as a row
RANDOM_LAYERS = (nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.RReLU)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def vectorizable(key: str) -> bool:
    """Whether config `key` may take a different value in each member of one population."""
    return any(key == v.rstrip(".") or (v.endswith(".") and key.startswith(v)) for v in VARYING)


def population_size(requested: int | str, base: DictConfig, varying: Sequence[str],
                    keep_checkpoints: bool) -> tuple[int, str]:
    """K for trials of `base` differing in `varying`, and why: an explicit K > 1 that cannot work
    is refused; `auto` takes the device's measured K, or 1 (saying why) where it cannot stack."""
    if requested != "auto":
        if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
            raise ConfigError(f"population={requested!r}: must be auto or an integer >= 1")
        if requested > 1:
            check_config(base, varying, keep_checkpoints, k=requested)
        return requested, f"{requested} as asked"
    device = str(base.trainer.get("accelerator") or "auto").lower()  # the device type it trains on
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = "cuda" if device == "gpu" else device
    k = AUTO_K.get(device, 1)
    on = "the CPU" if device == "cpu" else device
    if k == 1:
        return 1, f"auto -> 1 on {on} ({AUTO_WHY.get(device, 'stacking not measured there')})"
    try:
        check_config(base, varying, keep_checkpoints, k=k)
    except ConfigError as e:
        return 1, f"auto -> 1 on {on}: {e}"
    return k, f"auto -> {k} on {on} ({AUTO_WHY[device]})"


def check_config(base: DictConfig, varying: Sequence[str] = (), keep_checkpoints: bool = False,
                 k: int = 2) -> None:
    """Refuse, before any work, trials of `base` varying in `varying` that cannot train stacked."""
    if keep_checkpoints:
        raise ConfigError(f"keep_checkpoints keeps each trial's weights; a population (population={k}) "
                          f"keeps none: {USE_ONE}")
    check_weighting(base.model.get("weighting", "fixed"))  # before its own knobs are named below
    for key in varying:
        if not vectorizable(key):
            raise ConfigError(f"search_space key {key} changes the model's shapes or the training loop, "
                              f"so trials cannot train stacked (population={k}); {USE_ONE}")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mhtrain.config import build_model

    trainer_args(OmegaConf.to_container(base.trainer, resolve=True))
    for name, c in (base.get("callbacks") or {}).items():
        if c is not None and name != "early_stopping":
            raise ConfigError(f"callbacks.{name}: a population member runs early stopping only "
                              f"(no checkpoints); set callbacks.{name}=null or {USE_ONE}")
    check_optimizer(instantiate(base.model.optimizer)(params=[torch.zeros(1, requires_grad=True)]))
    es = (base.get("callbacks") or {}).get("early_stopping")
    with torch.random.fork_rng(devices=[]):  # initialising the weights draws; nobody else notices
        model = build_model(base)
    check_model(model, model.head_names, instantiate(es) if es is not None else None)


def check_weighting(weighting: str) -> None:
    """A population steps each member on one fixed-weight sum of its heads' losses: any other
    `model.weighting` is refused, in one line naming the method and what it does instead."""
    if weighting != "fixed":
        raise ConfigError(f"model.weighting={weighting} {ABOUT.get(weighting, 'is not fixed weights')}; "
                          f"a population trains fixed loss weights: {USE_ONE}")


def trainer_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The solo runs' Trainer arguments, checked, with `devices: auto` pinned to one device."""
    out = {k: v for k, v in args.items() if k != "_target_"}
    for key, allowed in TRAINER_FIXED.items():
        if key == "strategy" and isinstance(out.get(key), SingleDeviceStrategy):
            continue  # names its one device (a test's meta device, say)
        if key in out and out[key] not in allowed:
            raise ConfigError(f"trainer.{key}={out.get(key)!r}: a population validates every epoch "
                              "and steps every batch in float32 or bf16-mixed on one device; unset "
                              f"it or {USE_ONE}")
    devices = out.get("devices")
    if devices in (None, "auto"):
        out["devices"] = 1
    elif not _one_device(devices):
        raise ConfigError(f"trainer.devices={devices!r}: a population trains on one device (it stacks "
                          f"its members instead); set trainer.devices=1 or {USE_ONE}")
    return out


def _one_device(devices: Any) -> bool:
    """Whether a Trainer `devices` value names exactly one device (1, "1", [3], "3,")."""
    if isinstance(devices, str) and "," in devices:
        devices = [d for d in devices.split(",") if d.strip()]
    return len(devices) == 1 if isinstance(devices, list | tuple) else devices in (1, "1")


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """The stacked optimizer is Adam/AdamW with per-member arguments and nothing else."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        raise ConfigError(f"model.optimizer is {type(optimizer).__name__}; a population trains with Adam "
                          f"or AdamW: set model.optimizer._target_ or {USE_ONE}")
    group = optimizer.param_groups[0]
    for flag in ("amsgrad", "maximize"):
        if group.get(flag):
            raise ConfigError(f"model.optimizer.{flag}=true is not supported by a population; set it "
                              f"false or {USE_ONE}")


def check_criterion(head: str, criterion: nn.Module) -> None:
    """One stacked call per head needs a criterion whose per-sample losses give its mean."""
    if type(criterion) not in (nn.CrossEntropyLoss, nn.NLLLoss):
        raise ConfigError(f"model.criteria.{head} is {type(criterion).__name__}; a population trains "
                          f"CrossEntropyLoss or NLLLoss heads; {USE_ONE}")
    if criterion.reduction != "mean":
        raise ConfigError(f"model.criteria.{head}.reduction={criterion.reduction!r}: a population "
                          f"trains the mean loss; {USE_ONE}")


def check_early_stopping(es: EarlyStopping) -> None:
    """A member honours EarlyStopping's public settings; a subclass may change more: refused."""
    if type(es) is not EarlyStopping:
        raise ConfigError(f"callbacks.early_stopping is {type(es).__name__}; a population member runs "
                          f"lightning's EarlyStopping only; {USE_ONE}")


def check_net(net: nn.Module) -> None:
    """Refuse random layers other than Dropout, and BatchNorm with a cumulative average (it reads
    its batch count on the host every step)."""
    for name, m in net.named_modules():
        if isinstance(m, RANDOM_LAYERS) or (isinstance(m, nn.Dropout) and type(m) is not nn.Dropout):
            raise ConfigError(f"model.net layer {name} is {type(m).__name__}: a population draws "
                              f"per-member masks for nn.Dropout only; {USE_ONE}")
        if isinstance(m, nn.SyncBatchNorm):
            raise ConfigError(f"model.net layer {name} is SyncBatchNorm: a population runs on one "
                              f"device; {USE_ONE}")
        if isinstance(m, BATCH_NORMS) and m.momentum is None:
            raise ConfigError(f"model.net layer {name} is BatchNorm with momentum=None; give it a "
                              f"momentum or {USE_ONE}")


def layout(net: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of a network's parameters and buffers, in order."""
    return [(n, tuple(t.shape), t.dtype) for n, t in [*net.named_parameters(), *net.named_buffers()]]


def check_layout(population: list, member: list) -> None:
    """A member's network must have the population's `layout`."""
    if member != population:
        raise ConfigError("a member's network differs in shape from the population's; only values "
                          f"that leave shapes alone may vary between members; {USE_ONE}")


def check_model(model: Any, heads: Sequence[str], early_stopping: EarlyStopping | None) -> None:
    """A joining member's model (built from any config or by hand) against the population's."""
    if list(model.head_names) != list(heads):
        raise ConfigError(f"a member has heads {model.head_names}, the population {list(heads)}; "
                          "data.heads cannot vary inside a population")
    check_weighting(getattr(model, "weighting", "fixed"))
    for head, criterion in model.criteria.items():
        check_criterion(head, criterion)
    check_net(model.net)
    if early_stopping is not None:
        check_early_stopping(early_stopping)
    names = metric_names(list(heads))
    monitors = (("callbacks.early_stopping.monitor", early_stopping.monitor if early_stopping else None),
                ("model.scheduler_monitor", model.scheduler_monitor if model.scheduler_factory else None))
    for what, key in monitors:
        if key is not None and key not in names:
            raise ConfigError(f"{what}={key} is not a metric this model logs; use one of {names}")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, child in node.items() for k, v in _flat(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def check_member(base: DictConfig, cfg: DictConfig) -> None:
    """Refuse a member differing from `base` in a key that must not vary (compared unresolved)."""
    from omegaconf import OmegaConf

    ours, theirs = (_flat(OmegaConf.to_container(c, resolve=False)) for c in (base, cfg))
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key) and not vectorizable(key):
            raise ConfigError(f"{key} differs between members ({ours.get(key)!r} vs {theirs.get(key)!r}); "
                              f"it changes shapes or the training loop, so it cannot vary inside a "
                              f"population: {USE_ONE}")
