"""Adam and AdamW for K members at once, each with its own arguments and state.

Every quantity is a row per member: arguments [K] (float64, so bias corrections are computed
in double as torch does with its Python floats), moments [K, P], the step count [K]. The update
is torch.optim's single-tensor Adam, operation by operation (the same kernels: lerp, addcmul,
addcdiv's order), with each per-member scalar applied where torch applies its Python scalar, so
one member's update is, bit for bit on the CPU, the update `torch.optim.Adam` (or `AdamW`) makes
for that member alone.
"""

from __future__ import annotations

import torch

from mhtrain import ConfigError

ARGS = ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled")


def adam_args(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """A member's arguments, read from the optimizer its solo run would build (so torch's own
    defaults and the Adam/AdamW difference come from torch, not from a copy here), after its
    scheduler (if any) has set the starting lr."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        raise ConfigError(f"model.optimizer is {type(optimizer).__name__}; a population trains "
                          "with Adam or AdamW: set model.optimizer._target_ or use population=1")
    d = optimizer.param_groups[0]
    for flag in ("amsgrad", "maximize"):
        if d.get(flag):
            raise ConfigError(f"model.optimizer.{flag}=true is not supported by a population; "
                              "set it false or use population=1")
    beta1, beta2 = (float(b) for b in d["betas"])
    return {"lr": float(d["lr"]), "beta1": beta1, "beta2": beta2, "eps": float(d["eps"]),
            "weight_decay": float(d["weight_decay"]),
            "decoupled": float(bool(d.get("decoupled_weight_decay", False)))}


def adam_rows(args: dict[str, float], n_params: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A new member's optimizer rows: its arguments, zero moments, step 0."""
    rows = {k: torch.tensor(args[k], dtype=torch.float64, device=device) for k in ARGS}
    rows["step"] = torch.zeros((), dtype=torch.float64, device=device)
    rows["exp_avg"] = torch.zeros(n_params, device=device)
    rows["exp_avg_sq"] = torch.zeros(n_params, device=device)
    return rows


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [K] per-member scalar as a [K, 1] column in the parameters' dtype."""
    return v.to(like.dtype)[:, None]


@torch.no_grad()
def adam_step(param: torch.Tensor, grad: torch.Tensor, rows: dict[str, torch.Tensor],
              decay: bool = True) -> None:
    """One update of every member's parameters [K, P] in place (torch's `_single_tensor_adam`).

    A member's zero weight decay is an exact no-op; `decay=False` (no member decays) skips
    those two passes over the parameters.
    """
    rows["step"] += 1
    step, lr, beta1, beta2 = rows["step"], rows["lr"], rows["beta1"], rows["beta2"]
    if decay:
        wd, decoupled = rows["weight_decay"], rows["decoupled"] != 0
        param.mul_(_col(1 - lr * torch.where(decoupled, wd, 0.0), param))  # AdamW
        grad = grad.addcmul(param, _col(torch.where(decoupled, 0.0, wd), param))  # Adam (L2)
    rows["exp_avg"].lerp_(grad, _col(1 - beta1, param))
    rows["exp_avg_sq"].mul_(_col(beta2, param)).addcmul_(grad.mul(_col(1 - beta2, param)), grad)
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (rows["exp_avg_sq"].sqrt() / _col(bias_correction2_sqrt, param)).add_(_col(rows["eps"], param))
    param.add_(rows["exp_avg"].mul(_col(-step_size, param)).div_(denom))
