"""Adam and AdamW for K members at once: arguments and step [K] (float64, as torch's Python floats),
moments [K, P]. Torch's single-tensor Adam kernel by kernel, each over all K*P values (its fused
kernel cannot take per-member lrs): bit for bit on the CPU what `torch.optim.Adam`/`AdamW` makes."""

from __future__ import annotations

import torch

from mhtrain.population.check import check_optimizer

ARGS = ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled")


def adam_args(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """A member's arguments, read from the optimizer its solo run builds (defaults from torch)."""
    check_optimizer(optimizer)
    d = optimizer.param_groups[0]
    beta1, beta2 = (float(b) for b in d["betas"])
    return {"lr": float(d["lr"]), "beta1": beta1, "beta2": beta2, "eps": float(d["eps"]),
            "weight_decay": float(d["weight_decay"]),
            "decoupled": float(bool(d.get("decoupled_weight_decay", False)))}


def adam_rows(args: dict[str, float], n_params: int, device: torch.device | str,
              dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A new member's optimizer rows: its arguments, zero moments, step 0."""
    rows = {k: torch.tensor(args[k], dtype=torch.float64, device=device) for k in ARGS}
    moments = {k: torch.zeros(n_params, device=device, dtype=dtype) for k in ("exp_avg", "exp_avg_sq")}
    return {**rows, "step": torch.zeros((), dtype=torch.float64, device=device), **moments}


def _col(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A [K] per-member scalar as a [K, 1] column in the parameters' dtype."""
    return v.to(dtype)[:, None]


def adam_columns(rows: dict[str, torch.Tensor], decay: bool,
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """[K, 1] factors fixed between epoch boundaries (float64, then cast); without `decay` (no member
    decays) the decay passes are skipped; a member's zero decay is an exact no-op anyway."""
    lr, beta1, beta2 = rows["lr"], rows["beta1"], rows["beta2"]
    cols = {"one_minus_beta1": _col(1 - beta1, dtype), "beta2": _col(beta2, dtype),
            "one_minus_beta2": _col(1 - beta2, dtype), "eps": _col(rows["eps"], dtype)}
    if decay:
        wd, decoupled = rows["weight_decay"], rows["decoupled"] != 0
        cols["shrink"] = _col(1 - lr * torch.where(decoupled, wd, 0.0), dtype)  # AdamW
        cols["l2"] = _col(torch.where(decoupled, 0.0, wd), dtype)  # Adam (L2 in the gradient)
    return cols


@torch.no_grad()
def adam_step(param: torch.Tensor, grad: torch.Tensor, rows: dict[str, torch.Tensor],
              cols: dict[str, torch.Tensor] | None = None) -> None:
    """One in-place update of all parameters [K, P]; `cols` are made here (a sync) when not given."""
    if cols is None:
        cols = adam_columns(rows, bool((rows["weight_decay"] != 0).any()), param.dtype)
    rows["step"] += 1
    step, beta1, beta2 = rows["step"], rows["beta1"], rows["beta2"]
    if "shrink" in cols:
        param.mul_(cols["shrink"])
        grad = grad.addcmul(param, cols["l2"])
    rows["exp_avg"].lerp_(grad, cols["one_minus_beta1"])
    rows["exp_avg_sq"].mul_(cols["beta2"]).addcmul_(grad.mul(cols["one_minus_beta2"]), grad)
    step_size = rows["lr"] / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (rows["exp_avg_sq"].sqrt() / _col(bias_correction2_sqrt, param.dtype)).add_(cols["eps"])
    param.add_(rows["exp_avg"].mul(_col(-step_size, param.dtype)).div_(denom))
