"""Removing the blocks nobody reads (paper Sec. 2.1, "superfluous blocks"; docs/design.md §8).

With a frozen connectivity, every block of the last module is live (the head
reads them all), and a block of module ``i-1`` is live when some *live* block of
module ``i`` reads it. Dead blocks and their parameters are removed; the
function the network computes does not change (in eval mode: in training mode
the shared projection's batch statistics would see fewer inputs).

Example::

    binary = mcjax.masks.top_k(params["masks"], net.fan_in)
    pruned = mcjax.prune.drop_dead_blocks(net, params, batch_stats, binary)
    logits, _ = mcjax.apply(pruned.net, pruned.params, pruned.batch_stats, images,
                            connectivity=pruned.connectivity, train=False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from mcjax.models import Network

__all__ = ["PrunedModel", "drop_dead_blocks", "live_blocks"]

# Module parameters stacked on a leading branch axis; the shortcut is shared.
_PER_BRANCH = ("conv1", "conv2", "conv3", "bn1", "bn2", "bn3")


@dataclasses.dataclass
class PrunedModel:
    """A network with only its live blocks.

    Attributes:
      net: the :class:`~mcjax.models.Network`, whose architecture has the live
        count of branches per module (name suffixed ``-pruned``).
      params, batch_stats: without dead blocks (and without the masks).
      connectivity: per module ``i >= 2``, the ``[C'_i, C'_{i-1}]`` masks between
        live blocks (numpy), to pass as ``connectivity`` to :func:`mcjax.apply`;
        ``None`` for ``full``.
      live: per module, the bool ``[C]`` live-block vector of the unpruned network.
    """

    net: Network
    params: dict
    batch_stats: dict
    connectivity: list[np.ndarray] | None
    live: list[np.ndarray]


def live_blocks(connectivity: Sequence, last_cardinality: int | None = None) -> list[np.ndarray]:
    """Which blocks are live, module by module.

    Args:
      connectivity: for modules ``2..L``, the ``[C_i, C_{i-1}]`` masks (any
        array-like; a non-zero entry is an active connection). May be empty for a
        one-module network, then ``last_cardinality`` is needed.
      last_cardinality: blocks of the last module (default: rows of the last mask).

    Returns:
      ``L`` bool arrays; ``live[i][k]`` is True when block ``k`` of module ``i+1`` is live.
    """
    mats = [np.asarray(m) != 0 for m in connectivity]
    if not mats and last_cardinality is None:
        raise ValueError("a network without masks needs last_cardinality")
    last = mats[-1].shape[0] if mats else last_cardinality
    live = [np.ones(last, bool)]
    for mat in reversed(mats):
        if mat.shape[0] != live[0].shape[0]:
            raise ValueError(
                f"mask with {mat.shape[0]} rows follows a module of {live[0].shape[0]} blocks"
            )
        live.insert(0, mat[live[0]].any(axis=0))
    return live


def _slice_module(tree: dict, keep: np.ndarray) -> dict:
    index = np.flatnonzero(keep)
    return {
        name: jax.tree.map(lambda a: a[index], value) if name in _PER_BRANCH else value
        for name, value in tree.items()
    }


def drop_dead_blocks(
    net: Network,
    params: dict,
    batch_stats: dict,
    connectivity: Sequence | np.ndarray | None,
) -> PrunedModel:
    """Removes the dead blocks of a network with frozen ``connectivity``.

    Args:
      net: the unpruned network.
      params, batch_stats: its variables.
      connectivity: the frozen ``[L-1, C, C]`` (or per-module) masks, e.g.
        :func:`mcjax.masks.top_k` of the real-valued masks; ``None`` for ``full``
        (nothing to prune).

    Returns:
      A :class:`PrunedModel` computing the same logits as the unpruned network
      with the same connectivity in eval mode.
    """
    arch = net.arch
    if connectivity is None:
        if net.connectivity != "full":
            raise ValueError(f"connectivity mode {net.connectivity!r} needs its masks to prune")
        live = [np.ones(m.cardinality, bool) for m in arch.modules]
        return PrunedModel(net, params, batch_stats, None, live)
    mats = [np.asarray(m) for m in connectivity]
    if len(mats) != arch.num_modules - 1:
        raise ValueError(f"need {arch.num_modules - 1} masks, got {len(mats)}")
    live = live_blocks(mats, arch.modules[-1].cardinality)
    new_params = {k: v for k, v in params.items() if k not in ("masks", "modules")}
    new_params["modules"] = [
        _slice_module(p, keep) for p, keep in zip(params["modules"], live, strict=True)
    ]
    new_stats = dict(batch_stats)
    new_stats["modules"] = [
        _slice_module(s, keep) for s, keep in zip(batch_stats["modules"], live, strict=True)
    ]
    pruned_conn = [m[live[i + 1]][:, live[i]] for i, m in enumerate(mats)]
    new_arch = arch.with_cardinalities([int(keep.sum()) for keep in live])
    new_arch = dataclasses.replace(new_arch, name=f"{arch.name}-pruned")
    # Same mode; without params["masks"], apply reads the fixed connectivity as given.
    new_net = dataclasses.replace(net, arch=new_arch)
    return PrunedModel(new_net, new_params, new_stats, pruned_conn, live)
