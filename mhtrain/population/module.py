"""PopulationModule: K members trained as one stacked network by a Lightning Trainer.

Per-member state lives in `rows`, one tensor per quantity with the members along dim 0:
parameters [K, P], BatchNorm buffers, Adam moments and arguments, loss weights. Members leave
and join at epoch boundaries by taking the survivors' rows and appending the newcomers' (the
stack shrinks and grows, so a finished member costs nothing). Python-side state (histories,
early stopping, schedulers, loggers) lives in one `_Run` per member, in the same order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch.func import vmap
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mhtrain import ConfigError
from mhtrain.data.datamodule import MemberBatches, TensorDataModule
from mhtrain.models.module import (
    EpochSums,
    best_of,
    effective_weights,
    epoch_metrics,
    metric_key,
    metric_names,
    weighted_total,
)
from mhtrain.population.members import Member, MemberSource
from mhtrain.population.optim import adam_args, adam_rows, adam_step
from mhtrain.population.stack import StackedNets


@dataclass(eq=False)
class _Run:
    """A member while it trains: what the solo run's Trainer and callbacks would hold for it."""

    member: Member
    generator: torch.Generator  # its batch order, seeded as its solo run's datamodule
    optimizer: torch.optim.Optimizer  # on a dummy parameter: holds its lr for its scheduler
    scheduler: Any
    joined: int  # population epoch it started at
    size: int  # members training when it started
    start: float = field(default_factory=time.perf_counter)
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    acc_best: float = -math.inf
    stopped: str | None = None


class PopulationModule(L.LightningModule):
    """Trains up to `k` members of one architecture at once on `datamodule`'s data.

    Members come from `source` (first `first`, then more whenever one leaves); each reports its
    val metrics to `source` after every epoch and leaves when pruned, early-stopped or at its
    `max_epochs`. Optimization is manual: one backward through the stacked network and one
    stacked Adam step per batch.
    """

    def __init__(self, datamodule: TensorDataModule, source: MemberSource, k: int,
                 first: list[Member]) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.data, self.source, self.k = datamodule, source, k
        model = first[0].model
        self.heads = list(model.head_names)
        self.criteria = model.criteria  # the same for every member (refused otherwise)
        self.nets = StackedNets(model.net)
        self.rows: dict[str, torch.Tensor] = {}
        self.runs: list[_Run] = []
        self.sums: dict[str, EpochSums] = {}
        self._pending, self._val, self._epoch = first, {}, 0
        self.admitted = 0  # members trained so far

    # -- data: the datamodule's batches on this Trainer's device, one order per member
    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str) -> None:
        self.data.trainer = self.trainer
        self.data.setup("fit")

    def train_dataloader(self) -> MemberBatches:
        return MemberBatches(self.data.train_dataloader(), lambda: [r.generator for r in self.runs])

    def val_dataloader(self) -> Any:
        return self.data.val_dataloader()

    def configure_optimizers(self) -> None:
        return None  # the stacked Adam lives in `rows` (manual optimization)

    # -- steps
    def _member_buffers(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("buffer/"): v for k, v in self.rows.items() if k.startswith("buffer/")}

    def _losses(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per member and head [K, H]: each criterion's loss and the correct predictions."""
        dims = (0, None if shared else 0)
        losses = torch.stack([vmap(self.criteria[h], in_dims=dims)(logits[h], targets[h])
                              for h in self.heads], -1)
        with torch.no_grad():
            correct = torch.stack([(logits[h].argmax(-1) == targets[h]).sum(-1) for h in self.heads], -1)
        return losses, correct

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, targets = batch
        params = self.rows["params"]
        losses, correct = self._losses(self.nets.forward(params, self._member_buffers(), x), targets, False)
        total = weighted_total(losses, self.rows["priors"])
        self.manual_backward(total.sum())  # members share nothing: each gets its own gradient
        adam_step(params, params.grad, self.rows, self.decay)
        params.grad = None
        self.sums["train"].add(correct, losses, total, x.shape[1])
        return total.detach()  # each member's loss [K]: callbacks see it as outputs["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, targets = batch  # the same validation batch for every member
        logits = self.nets.forward(self.rows["params"], self._member_buffers(), x, shared_input=True)
        losses, correct = self._losses(logits, targets, True)
        total = weighted_total(losses, self.rows["priors"])
        self.sums["val"].add(correct, losses, total, len(x))

    def _metrics(self, split: str) -> dict[str, list[float]]:
        accs, head_losses, total = self.sums[split].compute_and_reset()
        values = epoch_metrics(split, self.heads, accs, head_losses, total,
                               effective_weights(self.rows["priors"]))
        if split == "train":
            weights = effective_weights(self.rows["priors"])
            values |= {metric_key(split, h, "weight"): weights[:, i] for i, h in enumerate(self.heads)}
        return {k: v.tolist() for k, v in values.items()}

    # -- modes: the stacked network is not a submodule (its template lives on the meta device)
    def on_train_epoch_start(self) -> None:
        self.nets.train(True)

    def on_validation_model_eval(self) -> None:
        super().on_validation_model_eval()
        self.nets.train(False)

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        self.nets.train(True)

    # -- members come and go at epoch boundaries
    def on_fit_start(self) -> None:
        self._restack([], self._pending)
        self._pending = []

    def on_validation_epoch_end(self) -> None:
        self._val = self._metrics("val")

    def on_train_epoch_end(self) -> None:
        train, val = self._metrics("train"), self._val
        batches = self.trainer.num_training_batches
        keep = []
        for i, run in enumerate(self.runs):
            row_val = {k: v[i] for k, v in val.items()}
            run.acc_best = max(run.acc_best, row_val[metric_key("val", self.heads[0], "acc")])
            row_val[metric_key("val", None, "acc_best")] = run.acc_best
            if self._epoch_end(run, {k: v[i] for k, v in train.items()}, row_val, batches):
                keep.append(i)
        self._epoch += 1
        free = self.k - len(keep)
        self._restack(keep, self.source.next(free) if free > 0 else [])
        if not self.runs:
            self.trainer.should_stop = True

    def _epoch_end(self, run: _Run, train: dict[str, float], val: dict[str, float], batches: int) -> bool:
        """One member's end of epoch as its solo Trainer and callbacks would see it; True if it
        goes on."""
        member, epoch = run.member, len(run.history)
        run.steps += batches
        for logger in member.loggers:  # rows as Lightning logs a solo run: val, then train
            logger.log_metrics({**val, "epoch": epoch}, step=run.steps - 1)
            logger.log_metrics({**train, "epoch": epoch}, step=run.steps - 1)
            logger.save()
        run.history.append(val)
        if not self.source.report(member, epoch, val) and run.stopped is None:
            run.stopped = "pruned"
        every = {**train, **val}
        es = member.early_stopping
        if es is not None and es._evaluate_stopping_criteria(torch.tensor(every[es.monitor]))[0]:
            run.stopped = run.stopped or "early_stopping"
        done = epoch + 1 >= member.max_epochs
        if done or (run.stopped and epoch + 1 >= member.min_epochs):
            self._finish(run, run.stopped or "max_epochs")
            return False
        if run.scheduler is not None:
            if isinstance(run.scheduler, ReduceLROnPlateau):
                run.scheduler.step(every[member.model.scheduler_monitor])
            else:
                run.scheduler.step()
        return True

    def _finish(self, run: _Run, stopped: str) -> None:
        for logger in run.member.loggers:
            logger.finalize("success")
        result = {
            "best": best_of(run.history), "final": run.history[-1], "history": run.history,
            "epochs": len(run.history), "seconds": time.perf_counter() - run.start,
            "params": sum(p.numel() for p in run.member.model.parameters()),
            "heads": list(self.heads), "output_dir": run.member.output_dir, "test": {},
            "stopped": stopped, "population": {"joined_epoch": run.joined, "members": run.size},
        }
        self.source.finish(run.member, result)

    def _admit(self, member: Member) -> tuple[_Run, dict[str, torch.Tensor]]:
        """A new member's run record and rows (its solo run's weights, buffers and arguments)."""
        model = member.model
        if list(model.head_names) != self.heads:
            raise ConfigError(f"a member has heads {model.head_names}, the population {self.heads}")
        if getattr(model, "log_variances", None) is not None:
            raise ConfigError("model.weighting=uncertainty learns weights outside the network; "
                              "a population trains fixed weights: use population=1")
        names = metric_names(self.heads)
        for what, key in (("callbacks.early_stopping.monitor",
                           member.early_stopping.monitor if member.early_stopping else None),
                          ("model.scheduler_monitor",
                           model.scheduler_monitor if model.scheduler_factory else None)):
            if key is not None and key not in names:
                raise ConfigError(f"{what}={key} is not a metric this model logs; use one of {names}")
        optimizer = model.optimizer_factory(params=[torch.zeros(1, requires_grad=True)])
        scheduler = model.scheduler_factory(optimizer=optimizer) if model.scheduler_factory else None
        flat, buffers = self.nets.row(model.net)
        rows = {"params": flat, **{f"buffer/{n}": b for n, b in buffers.items()},
                **adam_rows(adam_args(optimizer), flat.numel(), flat.device),
                "priors": model.priors.detach().clone()}
        run = _Run(member, torch.Generator().manual_seed(member.seed), optimizer, scheduler,
                   joined=self._epoch, size=0)
        self.admitted += 1
        return run, {k: v.to(self.device) for k, v in rows.items()}

    def _restack(self, keep: list[int], new: list[Member]) -> None:
        """Survivors' rows (in order) followed by the newcomers'; scheduler lrs synced in."""
        admitted = [self._admit(m) for m in new]
        for i in keep:  # a scheduler may have changed a survivor's lr at this epoch's end
            self.rows["lr"][i] = self.runs[i].optimizer.param_groups[0]["lr"]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        keys = list(self.rows or (admitted[0][1] if admitted else {}))
        self.rows = {key: torch.cat([*([self.rows[key].detach()[index]] if self.rows else []),
                                     *(rows[key][None] for _, rows in admitted)]) for key in keys}
        self.runs = [self.runs[i] for i in keep] + [run for run, _ in admitted]
        for run, _ in admitted:
            run.size = len(self.runs)
        if self.runs:
            self.rows["params"].requires_grad_(True)
            self.decay = bool((self.rows["weight_decay"] != 0).any())  # known here, not per step
            n = len(self.runs)
            self.sums = {s: EpochSums(len(self.heads), members=n).to(self.device) for s in ("train", "val")}
