"""Optuna studies over `mhtrain.train.fit`: study configs, the trial lifecycle, engines, the worker
loop, storage. Importing the package imports no Lightning, so `dashboard` starts quickly."""
