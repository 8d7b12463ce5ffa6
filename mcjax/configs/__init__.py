"""The configs that ship inside the package: the defaults every config file starts from
(:mod:`mcjax.configs.defaults`) and the digits quick start (:mod:`mcjax.configs.digits`),
which ``python -m mcjax.main`` runs without ``--config`` from any directory.

The other data sets' configs are files of the repository's ``configs/`` directory, run by
path (``--config configs/cifar100.py``).
"""
