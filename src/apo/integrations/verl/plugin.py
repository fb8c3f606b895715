"""verl plug-in entry point: importing this module registers APO in verl (policy losses ``apo`` and ``adpo``,
advantage estimators ``apo`` and ``apo_group``).

verl 0.9.1 (``verl/__init__.py``) runs ``entry_point.load()`` for every entry point of the ``verl.plugins`` group on
``import verl``, in the driver and in every Ray worker: ``load()`` imports the module (and, for ``module:attr``,
fetches the attribute without calling it). So the registration happens at import, and ``register`` is idempotent.
verl logs a failing plug-in only at debug level; this module logs at error level and re-raises, so a broken
install is visible at start. Other ways in: ``VERL_USE_EXTERNAL_MODULES=apo.integrations.verl.plugin``, or
``policy_loss._target_=apo.integrations.verl.config.APOPolicyLossConfig`` (importing that class imports this).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
_registered = False


def register() -> None:
    """Register the APO losses and estimators with verl's registries; a no-op after the first success.

    Raises:
        Exception: whatever failed (e.g. an incompatible verl), after logging it at error level.
    """
    global _registered
    if _registered:
        return
    try:
        from . import algos

        algos.register_all()
    except Exception:
        logger.exception(
            "apo: registering the APO policy losses and advantage estimators with verl failed; "
            "`loss_mode=apo` / `adv_estimator=apo_group` will not be found. Install the pinned verl "
            "(pip install 'apo[verl]', verl==0.9.1) in every process's environment."
        )
        raise
    _registered = True


register()
