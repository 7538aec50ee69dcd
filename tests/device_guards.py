"""Guards that make the GPU path's two silent faults fail a test on the CPU: a tensor left on
another device (it only breaks, or copies quietly, on a machine with a GPU) and a read of device
values back to the host inside a step (it stalls the GPU every step, and on the CPU never reaches
the dispatcher as a copy). Torch and Lightning only, like tests/test_gpu_path.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

Tensor = torch.Tensor
# Python-level reads of a tensor's values on the host: seen here whatever the device
READS = {Tensor.item: "item", Tensor.tolist: "tolist", Tensor.cpu: "cpu", Tensor.numpy: "numpy",
         Tensor.__bool__: "bool", Tensor.__float__: "float", Tensor.__int__: "int",
         Tensor.__index__: "index", Tensor.nonzero: "nonzero", torch.nonzero: "nonzero"}


def _to_host(args: tuple, kwargs: dict) -> bool:
    """Whether a `Tensor.to` call names the CPU as its destination."""
    for a in (*args[1:], kwargs.get("device")):
        if isinstance(a, str | torch.device) and torch.device(a).type == "cpu":
            return True
    return False


def on(device: torch.device | str) -> torch.device:
    """`device` with its index, as its tensors report it ("cuda" is the current GPU)."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return d


class HostReads(TorchFunctionMode):
    """Fails `.item()`, `.tolist()`, `.cpu()`, `.to("cpu")`, `.numpy()`, `bool()`/`float()`/`int()`
    and `nonzero` while `armed` (inside a step); counts them outside. On the meta device, which holds
    no values, a read outside a step gets zeros, so a whole fit can run there."""

    def __init__(self) -> None:
        super().__init__()
        self.armed, self.outside = False, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = READS.get(func) or ("to('cpu')" if func is Tensor.to and _to_host(args, kwargs) else None)
        if name is None:
            return func(*args, **kwargs)
        if self.armed:
            raise AssertionError(f"host read .{name}() inside a step")
        self.outside += 1
        t = args[0] if args and isinstance(args[0], Tensor) else None
        if t is not None and t.device.type == "meta":
            args = (torch.zeros(t.shape, dtype=t.dtype), *args[1:])
        return func(*args, **kwargs)


class OnDevice(TorchDispatchMode):
    """Fails an operation that mixes devices (compared with their index: cuda:0 is not cuda:1),
    copies between them aside; while `strict` (inside a step), any operation that touches a tensor
    anywhere but on `device`, a 0-dim CPU tensor too (torch itself would let it into a CUDA
    operation). A Python number made a host tensor on its way to the device is no fault."""

    COPIES = ("aten._to_copy", "aten.copy_")
    FROM_PYTHON = ("aten.lift_fresh", "aten.lift_fresh_copy")

    def __init__(self, device: torch.device | str, strict: bool = False) -> None:
        super().__init__()
        self.device, self.strict, self.ops = on(device), strict, 0

    def _fail_off_device(self, func: Any, tensors: list) -> None:
        for t in tensors:
            if isinstance(t, Tensor) and t.device != self.device:
                raise AssertionError(f"{func} touched a tensor on {t.device}, not on {self.device}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        op, kwargs = str(func.overloadpacket), kwargs or {}
        self.ops += 1
        if func.namespace == "prim" or op in self.FROM_PYTHON:
            return func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        devices = {t.device for t in inputs}
        if len(devices) > 1 and op not in self.COPIES:
            raise AssertionError(f"{func} mixes devices {sorted(map(str, devices))}")
        if self.strict and op != "aten._to_copy":
            self._fail_off_device(func, inputs)
        out = func(*args, **kwargs)
        if self.strict:
            self._fail_off_device(func, tree_leaves(out))
        return out


@contextmanager
def cuda_syncs_fail(device: torch.device | str) -> Iterator[None]:
    """On CUDA, any synchronising operation raises (`torch.cuda.set_sync_debug_mode("error")`)."""
    on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()  # not fake CUDA
    if on_cuda:
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        if on_cuda:
            torch.cuda.set_sync_debug_mode("default")


@contextmanager
def in_step(device: torch.device | str) -> Iterator[tuple[HostReads, OnDevice]]:
    """Code that must neither read device values back nor touch a tensor off `device`."""
    reads, placement = HostReads(), OnDevice(device, strict=True)
    reads.armed = True
    with reads, placement, cuda_syncs_fail(device):
        yield reads, placement


class Steps(Callback):
    """Arms the guards for each training and validation step (from the batch handed to the step to
    the step's end) and records the member rows' learning rates at each epoch's start."""

    def __init__(self, reads: HostReads, placement: OnDevice) -> None:
        self.reads, self.placement, self.lrs = reads, placement, []
        self.cuda = placement.device.type == "cuda" and torch.cuda.is_available()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.lrs.append(pl_module.stack.rows["lr"].tolist())

    def _arm(self, *_: Any) -> None:
        self.reads.armed = self.placement.strict = True
        if self.cuda:
            torch.cuda.set_sync_debug_mode("error")

    def _disarm(self, *_: Any) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
        self.reads.armed = self.placement.strict = False

    on_train_batch_start = on_validation_batch_start = _arm
    on_train_batch_end = on_validation_batch_end = _disarm


class MetaAccelerator(CPUAccelerator):
    """Lightning training on the meta device (shapes and devices, no values): a Trainer's whole
    path, datamodule and engine included, run where any tensor left on the CPU is on another device."""

    def setup_device(self, device: torch.device) -> None:
        pass

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("meta")]
