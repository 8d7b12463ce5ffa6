"""The machinery of ``python -m mcjax.sweep`` (:mod:`mcjax.sweep`), one job per module.

* :mod:`~mcjax.sweeps.grid`: grid axes, their cross product, which values apply, names;
* :mod:`~mcjax.sweeps.resolve`: a run's config resolved as ``mcjax.main`` would;
* :mod:`~mcjax.sweeps.plan`: the sweep, its runs (checked before anything runs), ``sweep.json``;
* :mod:`~mcjax.sweeps.lock`: one sweep at a time per sweep directory;
* :mod:`~mcjax.sweeps.local`: runs them one after another, surviving preemption (each
  started through :mod:`~mcjax.sweeps.stop_with_parent`);
* :mod:`~mcjax.sweeps.slurm`: or writes a SLURM array job (every value quoted);
* :mod:`~mcjax.sweeps.aggregate` and :mod:`~mcjax.sweeps.report`: ``results.json``,
  ``table.md`` and the figures;
* :mod:`~mcjax.sweeps.presets` and :mod:`~mcjax.sweeps.paper`: the paper's experiments
  and numbers.
"""
