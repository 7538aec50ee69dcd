"""Adam and AdamW for K members at once, each with its own arguments and state.

Every quantity is a row per member: arguments [K] (float64, so bias corrections are computed
in double as torch does with its Python floats), moments [K, P], the step count [K]. The update
is torch.optim's single-tensor Adam, operation by operation (the same kernels: lerp, addcmul,
addcdiv's order), with each per-member scalar applied where torch applies its Python scalar, so
one member's update is, bit for bit on the CPU, the update `torch.optim.Adam` (or `AdamW`) makes
for that member alone.

Each operation is already one kernel over all K*P values (what `foreach` buys for many tensors);
torch's fused kernel takes one lr for all tensors, so it cannot serve per-member lrs. What only
changes at an epoch boundary (arguments, a scheduler's lr) is turned into [K, 1] columns there
(`adam_columns`), so a step computes only its two bias corrections.
"""

from __future__ import annotations

import torch

from mhtrain.population.check import check_optimizer

ARGS = ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled")


def adam_args(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """A member's arguments, read from the optimizer its solo run would build (so torch's own
    defaults and the Adam/AdamW difference come from torch, not from a copy here), after its
    scheduler (if any) has set the starting lr."""
    check_optimizer(optimizer)
    d = optimizer.param_groups[0]
    beta1, beta2 = (float(b) for b in d["betas"])
    return {"lr": float(d["lr"]), "beta1": beta1, "beta2": beta2, "eps": float(d["eps"]),
            "weight_decay": float(d["weight_decay"]),
            "decoupled": float(bool(d.get("decoupled_weight_decay", False)))}


def adam_rows(args: dict[str, float], n_params: int, device: torch.device | str,
              dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A new member's optimizer rows: its arguments, zero moments (in the parameters' dtype),
    step 0."""
    rows = {k: torch.tensor(args[k], dtype=torch.float64, device=device) for k in ARGS}
    rows["step"] = torch.zeros((), dtype=torch.float64, device=device)
    rows["exp_avg"] = torch.zeros(n_params, device=device, dtype=dtype)
    rows["exp_avg_sq"] = torch.zeros(n_params, device=device, dtype=dtype)
    return rows


def _col(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A [K] per-member scalar as a [K, 1] column in the parameters' dtype."""
    return v.to(dtype)[:, None]


def adam_columns(rows: dict[str, torch.Tensor], decay: bool,
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The per-member factors that change only when members or lrs do (computed in float64 as
    torch does, then cast): made once per epoch boundary, read by every step. `decay`: whether
    any member decays its weights (the caller knows it from the members' arguments; without
    it the two decay passes are skipped)."""
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
    """One update of every member's parameters [K, P] in place (torch's `_single_tensor_adam`).

    `cols` are `adam_columns(rows, …)` (made here, with a sync, when not given). A member's zero
    weight decay is an exact no-op.
    """
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
