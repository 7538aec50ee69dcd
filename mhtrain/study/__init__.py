"""Optuna studies over `mhtrain.train.fit`: search spaces, objective, storage, runner, report."""

import logging


def quiet_lightning() -> None:
    """A study shows one progress bar and a summary; Lightning's per-run banners would drown them.
    Lightning sets its loggers to INFO when it is imported, so the modules that train call this
    after that import; the package itself imports no Lightning, so `dashboard` starts quickly."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
