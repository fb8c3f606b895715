"""apo: alpha-divergence preference optimization (APO) and its baselines for online RL of language models.

The library (``apo.core``, re-exported here) is pure PyTorch. ``apo.APOConfig`` and ``apo.APOTrainer`` (TRL
integration) are imported lazily, so ``import apo`` never imports TRL.
"""

from .core import *  # noqa: F403
from .core import __all__ as _core_all

__version__ = "0.1.0"
_LAZY = {"APOConfig": "apo.integrations.trl.config", "APOTrainer": "apo.integrations.trl.trainer"}
__all__ = [*_core_all, *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'apo' has no attribute {name!r}")
