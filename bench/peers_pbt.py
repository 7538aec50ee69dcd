"""mhtrain's population-based training as `python -m mhtrain.study run pbt_loss_weights` runs it, with
each exploit timed: `Controller.step` (rank the members, copy the bottom's rows from the top's,
set the explored values) is wrapped, and its seconds per copy go to bench/peers.py's clock file.

    python bench/peers_pbt.py CLOCK_FILE -- <the study command line's arguments>
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from mhtrain import pbt


def timed(clock: str):  # noqa: ANN201 - wraps Controller.step
    step = pbt.Controller.step

    def wrapper(self: pbt.Controller, stack: Any, runs: Any) -> list[tuple[int, int]]:
        start = time.perf_counter()
        pairs = step(self, stack, runs)
        if pairs:
            with open(clock, "a") as f:
                f.write(json.dumps({"event": "exploit", "t": time.time(), "copies": len(pairs),
                                    "seconds": (time.perf_counter() - start) / len(pairs)}) + "\n")
        return pairs

    return wrapper


if __name__ == "__main__":
    clock_file, args = sys.argv[1], sys.argv[3:]
    pbt.Controller.step = timed(clock_file)
    from mhtrain.study.__main__ import main

    sys.exit(main(["run", "pbt_loss_weights", *args]))
