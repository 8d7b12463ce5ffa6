"""scikit-learn's digits: the quick start, shipped inside the package.

The config is :mod:`mcjax.configs.digits` (what ``python -m mcjax.main`` runs without
``--config``, from any directory); this file names it for ``--config configs/digits.py``.
"""

from mcjax.configs.digits import get_config

__all__ = ["get_config"]
