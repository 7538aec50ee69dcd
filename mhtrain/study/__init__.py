"""Optuna studies over `mhtrain.train.fit`: search spaces, objective, storage, runner, report."""

import logging

import lightning.pytorch  # noqa: F401 - sets its loggers to INFO on import; quieten after that

# A study shows one progress bar and a summary; Lightning's per-run banners would drown them.
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
