"""mcjax: MaskConnect in JAX — learning which branches feed each block of a multi-branch network.

Public API (see each module's docstring):

* :mod:`mcjax.masks`: ``sample``, ``top_k``, ``aggregate`` (straight-through
  ``jax.custom_vjp``), ``random_k_hot``, ``mean_entropy``;
* :mod:`mcjax.checks`: ``check_fan_in``, ``check_connectivity`` (binary, shapes, K per
  row, where a connectivity enters) and the ``checked`` mode (the same under ``jit``);
* :mod:`mcjax.blocks`: the bottleneck block and module as pure functions;
* :mod:`mcjax.models`: ``Network``, ``init``, ``apply``;
* :mod:`mcjax.connectivity`: which masks a step uses (``step_masks``), by mode and phase,
  and for a Flax layer whose frozen flag is state (``layer_masks``);
* :mod:`mcjax.architectures`: ``get_architecture`` for every network of the paper;
* :mod:`mcjax.optim`: ``maskconnect`` (any optax optimizer for the weights, clipped SGD
  for the masks; masks found by type in NNX, by a refused-when-ambiguous name rule in
  plain trees), ``mask_sgd``, ``weight_sgd``, ``clip_params``, ``is_mask``, ``check_masks``;
* :mod:`mcjax.prune`: ``live_blocks``, ``drop_dead_blocks``, ``chain_liveness``;
* :mod:`mcjax.export`: ``save``, ``load``, ``predict`` (the pruned model, jitted);
* :mod:`mcjax.nnx` and :mod:`mcjax.linen`: Flax modules over this core
  (``MaskedAggregation``, ``MultiBranch``, ``Network``; NNX's ``Mask``, ``Connectivity``
  and ``Frozen`` variable types, Linen's ``"connectivity"`` collection; ``prune`` for
  any model built of ``MultiBranch`` layers; docs/flax.md);
* :mod:`mcjax.costs`: parameter and FLOP counts;
* :mod:`mcjax.parallel`: ``make_mesh``, ``data_parallel_train_step`` /
  ``data_parallel_eval_step`` (``jax.shard_map`` over a ``data`` axis, synchronised BN,
  gradients averaged without the replicated-grad trap), ``process_rows``, ``global_batch``.
"""

from mcjax import (
    architectures,
    blocks,
    checks,
    connectivity,
    costs,
    export,
    layers,
    linen,
    masks,
    models,
    nnx,
    optim,
    parallel,
    prune,
)
from mcjax.architectures import Architecture, ModuleSpec, get_architecture
from mcjax.models import Network, apply, init
from mcjax.optim import maskconnect
from mcjax.prune import PrunedModel, live_blocks

__version__ = "0.1.0"

__all__ = [
    "Architecture",
    "ModuleSpec",
    "Network",
    "PrunedModel",
    "apply",
    "architectures",
    "blocks",
    "checks",
    "connectivity",
    "costs",
    "export",
    "get_architecture",
    "init",
    "layers",
    "linen",
    "live_blocks",
    "maskconnect",
    "masks",
    "models",
    "nnx",
    "optim",
    "parallel",
    "prune",
]
