"""TRL integration: :class:`APOConfig` (a ``GRPOConfig``) and :class:`APOTrainer` (a ``GRPOTrainer``), tested with
trl 1.16.0. See :mod:`apo.integrations.trl.trainer` for the hooks overridden and every departure from TRL and the
paper."""

from .config import APOConfig
from .trainer import APOTrainer

__all__ = ["APOConfig", "APOTrainer"]
