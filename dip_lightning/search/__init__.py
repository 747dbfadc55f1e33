"""Optuna search over the settings of ``dip fit`` (``dip search``).

- :mod:`~dip_lightning.search.spec`: study specs (``search/*.yaml``) and the search space;
- :mod:`~dip_lightning.search.objective`: each trial built through
  :class:`~dip_lightning.cli.DIPCLI`, step-wise pruning, the space checked before any trial runs;
- :mod:`~dip_lightning.search.runner`: storages, workers, ``best.yaml`` and the summary;
- :mod:`~dip_lightning.search.cli`: the ``dip search`` command.

Optuna and the database drivers are imported only when a search runs.
"""

from dip_lightning.search.spec import Param, StudySpec, parse_space

__all__ = ["Param", "StudySpec", "parse_space"]
