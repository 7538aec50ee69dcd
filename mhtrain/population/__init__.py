"""Populations: K runs trained at once as one stacked model (from configs: `fit.fit_population`)."""

from mhtrain.contract import best_of
from mhtrain.population.members import Member, MemberSource
from mhtrain.population.trainer import train_population

__all__ = ["Member", "MemberSource", "best_of", "train_population"]
