"""Where bench/peers.py finds each peer, and how `--setup` installs it: Optuna's example runs in the
project's own environment (its lock pins optuna-integration, a dev dependency), every other peer in
a virtual environment of its own under the peers folder (`MHTRAIN_PEERS_DIR`, default
~/.cache/mhtrain-peers), from pinned versions, never touching the project's `.venv` or lock.

- optuna: the project's own environment (mhtrain, optuna-integration from requirements.lock)
- ray:    the project's lock + mhtrain (editable) + ray[tune]
- seed:   the seed repository's own requirements, pinned (its hydra-optuna-sweeper pins Optuna 2.x),
          and a checkout of josmithiii/lightning-hydra-template-extended (`MHTRAIN_PEERS_SEED_REPO`,
          default <peers folder>/lightning-hydra-template-extended), which `--setup` does not fetch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from peers_common import ROOT

SEED_REPO = "josmithiii/lightning-hydra-template-extended"
SEED_COMMIT = "6b83ffc"  # the commit bench/peers.py was written against
SEED_CLONE = f"git clone https://github.com/{SEED_REPO} {{dir}} && git -C {{dir}} checkout {SEED_COMMIT}"
LOCK = ROOT / "requirements.lock"
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
PINS: dict[str, list[str]] = {
    "ray": ["ray[tune]==2.60.0"],
    "seed": [*TORCH, "lightning==2.6.6", "torchmetrics==1.9.0", "hydra-core==1.3.2", "hydra-colorlog==1.2.0",
             "hydra-optuna-sweeper==1.2.0", "rootutils==1.0.7", "rich==15.0.0", "tensorboard==2.21.0"],
}
OWN_ENV = ("mhtrain", "optuna")  # run by this interpreter: nothing to install
ON_LOCK = ("ray",)  # peers that train mhtrain's own module: the project's lock under them
PROBE = {"optuna": "import optuna_integration, mhtrain", "ray": "import ray.tune, mhtrain",
         "seed": "import hydra_plugins.hydra_optuna_sweeper, rootutils, lightning"}


def peers_dir() -> Path:
    return Path(os.environ.get("MHTRAIN_PEERS_DIR") or Path.home() / ".cache" / "mhtrain-peers")


def python(tool: str) -> Path:
    """The interpreter a tool runs with (mhtrain and Optuna's example: this one)."""
    return Path(sys.executable) if tool in OWN_ENV else peers_dir() / tool / "bin" / "python"


def seed_repo() -> Path:
    default = peers_dir() / "lightning-hydra-template-extended"
    return Path(os.environ.get("MHTRAIN_PEERS_SEED_REPO") or default)


def commands(tool: str) -> list[list[str]]:
    """The commands that install `tool`'s environment (what `--setup` runs and prints)."""
    env, pip = peers_dir() / tool, [str(python(tool)), "-m", "pip", "install", "-q"]
    lock = ["-r", str(LOCK)] if tool in ON_LOCK else []
    steps = [[sys.executable, "-m", "venv", str(env)], [*pip, *lock, *PINS[tool]]]
    if tool in ON_LOCK:
        steps.append([*pip, "--no-deps", "-e", str(ROOT)])
    return steps


def missing(tool: str) -> str | None:
    """Why `tool` cannot run here, in one line that says how to fix it; None when it can."""
    if tool == "mhtrain":
        return None
    if tool == "seed" and not (seed_repo() / "src" / "train.py").exists():
        return f"no checkout at {seed_repo()}: {SEED_CLONE.format(dir=seed_repo())}"
    probe = subprocess.run([str(python(tool)), "-c", PROBE[tool]], capture_output=True, text=True) \
        if python(tool).exists() else None
    if (probe is None or probe.returncode) and tool in OWN_ENV:
        return "optuna-integration is not in this environment: make install (requirements.lock pins it)"
    if probe is None or probe.returncode:
        return f"not installed in {peers_dir() / tool}: python bench/peers.py --setup {tool}"
    return None


def setup(tools: list[str]) -> None:
    """Install each tool's environment that does not work yet; a failure is one line, then the next."""
    for tool in tools:
        if tool in OWN_ENV or python(tool).exists() and not missing(tool):
            continue
        for step in commands(tool):
            print("+ " + " ".join(step), flush=True)
            if subprocess.run(step).returncode:
                print(f"{tool}: could not install (the command above failed); the bench skips it")
                break
        if tool == "seed" and not (seed_repo() / "src" / "train.py").exists():
            print(f"seed: clone the repository: {SEED_CLONE.format(dir=seed_repo())}")


def versions(tool: str) -> str:
    """The versions that decide a tool's behaviour, as its environment reports them."""
    names = {"mhtrain": ["optuna", "lightning"], "optuna": ["optuna", "optuna-integration", "lightning"],
             "ray": ["ray", "optuna", "lightning"],
             "seed": ["optuna", "hydra-optuna-sweeper", "lightning"]}[tool]
    code = (f"import importlib.metadata as m\nfor n in {names!r}:\n  try: print(n, m.version(n))\n"
            "  except Exception: print(n, '?')")
    out = subprocess.run([str(python(tool)), "-c", code], capture_output=True, text=True).stdout
    return ", ".join(out.splitlines())
