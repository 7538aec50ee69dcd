"""The stacked math: every member's tensors as rows and one step for all at once, with no Lightning
and no Python per member. Members join and leave at epoch boundaries (`restack`), where what stays
fixed for an epoch is prepared, so a step launches its kernels and reads nothing back."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mhtrain.contract import metric_key
from mhtrain.models.module import EpochSums, effective_weights, epoch_metrics, weighted_total
from mhtrain.pbt import LR, WEIGHTS
from mhtrain.population.check import check_criterion
from mhtrain.population.optim import adam_columns, adam_rows, adam_step
from mhtrain.population.stack import StackedNets

Targets = Mapping[str, torch.Tensor]


class Stack:
    """K members of the architecture of `template` (a MultiheadLitModule) on `device`."""

    def __init__(self, template: Any, device: torch.device | str = "cpu") -> None:
        self.heads = list(template.head_names)
        for h in self.heads:  # copied below, so `to` moves ours and not the template's
            check_criterion(h, template.criteria[h])
        self.criteria: dict[str, nn.Module] = {h: copy.deepcopy(template.criteria[h]) for h in self.heads}
        self.nets = StackedNets(template.net)
        self.device = torch.device(device)
        self.rows: dict[str, torch.Tensor] = {}
        self.args: list[dict[str, float]] = []  # each member's Adam arguments, on the host
        self.cols: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.sums: dict[str, EpochSums] = {}

    def to(self, device: torch.device | str) -> Stack:
        """Train on `device` (set before the first member joins)."""
        self.device = torch.device(device)
        self.criteria = {h: c.to(self.device) for h, c in self.criteria.items()}
        return self

    def member_rows(self, model: Any, seed: int) -> dict[str, torch.Tensor]:
        """A new member's weights, buffers and loss weights, on the host (`restack` adds Adam state)."""
        flat, buffers = self.nets.row(model.net, seed)
        return {"params": flat, **{f"buffer/{n}": b for n, b in buffers.items()},
                "priors": model.priors.detach().clone()}

    def restack(self, keep: Sequence[int], lrs: Sequence[float],
                new: Sequence[tuple[dict[str, torch.Tensor], dict[str, float]]] = ()) -> None:
        """The survivors' rows `keep` as they are (with `lrs`, their schedulers' lrs now), then the
        newcomers' (rows, Adam arguments) with zero Adam state."""
        self.args = [{**self.args[i], "lr": float(lr)} for i, lr in zip(keep, lrs, strict=True)]
        self.args += [dict(args) for _, args in new]
        index = torch.tensor(list(keep), dtype=torch.long, device=self.device)
        parts = [{k: v.detach()[index] for k, v in self.rows.items()}] if self.rows else []
        for rows, args in new:
            row = {**rows, **adam_rows(args, rows["params"].numel(), self.device, rows["params"].dtype)}
            parts.append({k: v.to(self.device)[None] for k, v in row.items()})
        self.rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
        if not self.args:
            self.rows, self.cols, self.buffers, self.sums = {}, {}, {}, {}
            return
        self.rows["lr"] = torch.tensor([a["lr"] for a in self.args], dtype=torch.float64).to(self.device)
        self.rows["params"].requires_grad_(True)
        self._columns()
        self.buffers = {k.removeprefix("buffer/"): v for k, v in self.rows.items() if k.startswith("buffer/")}
        with self.device:  # made where they are used, not copied there
            self.sums = {s: EpochSums(len(self.heads), members=len(self.args)) for s in ("train", "val")}

    def _columns(self) -> None:
        """Adam's [K, 1] factors, made again whenever a member's arguments change."""
        decay = any(a["weight_decay"] != 0 for a in self.args)
        self.cols = adam_columns(self.rows, decay, self.rows["params"].dtype)

    def copy_member(self, dst: int, src: int) -> None:
        """PBT's exploit as a row copy: member `src`'s whole training state over member `dst`, in
        place and with no I/O (weights, BatchNorm statistics, dropout streams and draw counts, loss
        weights, Adam arguments, moments and step), so `dst` goes on exactly as `src` would."""
        with torch.no_grad():
            for row in self.rows.values():  # `buffers` holds these very tensors
                row[dst] = row[src]
        self.args[dst] = dict(self.args[src])
        self._columns()

    def set_hypers(self, i: int, lr: float | None = None, priors: Sequence[float] | None = None) -> None:
        """Member `i`'s learning rate and loss weights (in head order) from its next step on."""
        with torch.no_grad():
            if lr is not None:
                self.rows["lr"][i] = float(lr)
                self.args[i]["lr"] = float(lr)
            if priors is not None:
                self.rows["priors"][i] = torch.as_tensor(priors, dtype=self.rows["priors"].dtype)
        self._columns()

    def values(self, i: int) -> dict[str, float]:
        """Member `i`'s mutable values by config key (PBT's view of it, `mhtrain.pbt.Members`)."""
        weights = self.rows["priors"][i].tolist()
        return {LR: self.args[i]["lr"], **{WEIGHTS + h: w for h, w in zip(self.heads, weights, strict=True)}}

    def exploit(self, dst: int, src: int, values: Mapping[str, float]) -> None:
        """PBT's exploit: member `dst` takes `src`'s whole state and goes on with `values` (config
        keys; missing ones stay as copied)."""
        self.copy_member(dst, src)
        now = self.values(dst)
        priors = [float(values.get(WEIGHTS + h, now[WEIGHTS + h])) for h in self.heads]
        self.set_hypers(dst, lr=values.get(LR), priors=priors)

    def train(self, mode: bool = True) -> None:
        self.nets.train(mode)

    def losses(self, logits: Mapping[str, torch.Tensor],
               targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Per member and head [K, H]: mean loss (one criterion call per head over all K*B samples)
        and correct predictions; `targets` are [K, B] or shared [B]."""
        losses, correct = [], []
        for h in self.heads:
            logit = logits[h]
            k, b, c = logit.shape
            target = targets[h].expand(k, b)
            crit, fn = self.criteria[h], F.nll_loss
            args = {"weight": crit.weight, "ignore_index": crit.ignore_index, "reduction": "none"}
            if isinstance(crit, nn.CrossEntropyLoss):
                fn, args["label_smoothing"] = F.cross_entropy, crit.label_smoothing
            per = fn(logit.reshape(k * b, c), target.reshape(k * b), **args).view(k, b)
            if crit.weight is None and crit.ignore_index < 0:  # labels are >= 0: nothing ignored
                losses.append(per.mean(1))
            else:
                w = crit.weight[target.clamp(min=0)] if crit.weight is not None else torch.ones_like(per)
                losses.append(per.sum(1) / (w * (target != crit.ignore_index)).sum(1))
            with torch.no_grad():
                correct.append((logit.argmax(-1) == target).sum(-1))
        return torch.stack(losses, -1), torch.stack(correct, -1)

    def train_step(self, x: torch.Tensor, targets: Targets,
                   backward: Callable[[torch.Tensor], None] = torch.Tensor.backward) -> torch.Tensor:
        """One step of every member on its own batch (x [K, B, ...]); returns the losses [K]."""
        params = self.rows["params"]
        losses, correct = self.losses(self.nets.forward(params, self.buffers, x), targets)
        total = weighted_total(losses, self.rows["priors"])
        backward(total.sum())  # members share nothing: each gets its own gradient
        adam_step(params, params.grad, self.rows, self.cols)
        params.grad = None
        self.sums["train"].add(correct, losses, total, x.shape[1])
        return total.detach()

    def val_step(self, x: torch.Tensor, targets: Targets) -> None:
        """Every member on the same validation batch (x [B, ...])."""
        logits = self.nets.forward(self.rows["params"], self.buffers, x, shared_input=True)
        losses, correct = self.losses(logits, targets)
        self.sums["val"].add(correct, losses, weighted_total(losses, self.rows["priors"]), len(x))

    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        """The epoch's metrics, each [K] on the device; the sums start again."""
        accs, head_losses, total = self.sums[split].compute_and_reset()
        weights = effective_weights(self.rows["priors"])
        values = epoch_metrics(split, self.heads, accs, head_losses, total, weights)
        if split == "train":
            values |= {metric_key(split, h, "weight"): weights[:, i] for i, h in enumerate(self.heads)}
        return values
