"""Reading results: collect runs into one xarray Dataset, statistics, plots and reports."""
from analysis.collect import collect

__all__ = ["collect"]
