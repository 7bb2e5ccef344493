"""Alias kept for the public interface (``main.rank.filter_saliency``): the criterion lives in ``coring.rank``."""
from coring.rank import filter_saliency, select_filters

__all__ = ["filter_saliency", "select_filters"]
