"""verl 0.9.1 plug-in: APO/ADPO group losses and APO advantage estimators (``apo.integrations.verl.plugin``).

Nothing here imports verl: the submodules do, and verl loads ``plugin`` through the ``verl.plugins`` entry point.
"""
