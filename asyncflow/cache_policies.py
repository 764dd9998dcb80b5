"""Cache policies by Prefect's module name: `from asyncflow.cache_policies import INPUTS`."""

from asyncflow.results import cache_policies as _policies
from asyncflow.results.cache_policies import *  # noqa: F403

__all__ = list(_policies.__all__)
