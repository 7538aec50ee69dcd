"""Populations: K runs of one study trained at once as one stacked model on one device.

`train_population` (torch and Lightning only) and `mhtrain.population.fit.fit_population` (from
configs) take a `MemberSource` that supplies members and hears their metrics and ends.
"""

from mhtrain.contract import best_of
from mhtrain.population.engine import train_population
from mhtrain.population.members import Member, MemberSource

__all__ = ["Member", "MemberSource", "best_of", "train_population"]
