"""Removing the blocks nobody reads (paper Sec. 2.1, "superfluous blocks"; docs/design.md §8).

With a frozen connectivity, every block of the last module is live (the head
reads them all), and a block of module ``i-1`` is live when some *live* block of
module ``i`` reads it. Dead blocks and their parameters are removed; the
function the network computes does not change (in eval mode: in training mode
the shared projection's batch statistics would see fewer inputs).

The same rule prunes a model of one's own built from ``MultiBranch`` layers
(:func:`chain_liveness`, used by :func:`mcjax.nnx.prune` and :func:`mcjax.linen.prune`).

Example::

    binary = mcjax.masks.top_k(params["masks"], net.fan_in)
    pruned = mcjax.prune.drop_dead_blocks(net, params, batch_stats, binary)
    logits = pruned.logits(images)  # mcjax.apply of the live blocks, eval mode
    pruned.save("pruned_model", mean_image=mean_image)  # mcjax.export.save
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from mcjax import checks, export, models
from mcjax.models import Network

__all__ = [
    "PRUNED_OUTPUT_RTOL",
    "PrunedModel",
    "chain_liveness",
    "check_pruned_output",
    "check_top_k_decided",
    "drop_dead_blocks",
    "live_blocks",
]

# The Flax pruners compare the pruned model's output with the model's on an example
# call: removing blocks multiplied by 0 changes only the order of float32 sums.
PRUNED_OUTPUT_RTOL = 1e-5

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

    def logits(self, images: jax.Array) -> jax.Array:
        """``images [N, H, W, in_channels]`` -> float32 logits ``[N, num_classes]``:
        :func:`mcjax.apply` of the live blocks in eval mode (the running BN statistics),
        the unpruned network's logits with the same connectivity."""
        logits, _ = models.apply(
            self.net,
            self.params,
            self.batch_stats,
            images,
            connectivity=self.connectivity,
            train=False,
        )
        return logits

    def save(
        self,
        path: str,
        *,
        mean_image: np.ndarray,
        std: np.ndarray | float = 1.0,
        crop: int | None = None,
    ) -> None:
        """Writes the model with its test-time preprocessing (:func:`mcjax.export.save`;
        :func:`mcjax.export.load` reads it back)."""
        export.save(
            path,
            self.net,
            self.params,
            self.batch_stats,
            self.connectivity,
            mean_image=mean_image,
            std=std,
            crop=crop,
        )


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


def chain_liveness(
    num_branches: Sequence[int],
    mixes: Sequence[np.ndarray | None],
    reads_previous: Sequence[bool],
) -> list[np.ndarray]:
    """Which branches are live in a chain of multi-branch layers, layer by layer.

    Args:
      num_branches: ``C`` of each layer, in the order they run.
      mixes: each layer's ``[C, C_in]`` evaluation connectivity (non-zero: read), or
        ``None`` for a layer with one shared input.
      reads_previous: whether layer ``i``'s mix reads the branches of layer ``i-1``.

    Returns:
      Bool ``[C]`` per layer: the branches of a layer that no later layer reads
      through its mix (the last, or one whose successor does not read it) are all
      live; otherwise a branch is live when a live branch of the next layer reads it.
    """
    count = len(num_branches)
    live = [np.ones(c, bool) for c in num_branches]
    for index in range(count - 2, -1, -1):
        if reads_previous[index + 1]:
            mix = np.asarray(mixes[index + 1]) != 0
            live[index] = mix[live[index + 1]].any(axis=0)
    return live


def check_pruned_output(pruned_output, reference) -> None:
    """Refuses a pruned model whose output on the example call is not the model's.

    Relative to the largest entry of each output: at most :data:`PRUNED_OUTPUT_RTOL`.
    A larger difference means a branch is read outside the chain of multi-branch layers.
    """
    worst = 0.0
    for got, expected in zip(
        jax.tree.leaves(pruned_output), jax.tree.leaves(reference), strict=True
    ):
        got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
        if got.shape != expected.shape:
            worst = float("inf")
            break
        scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
        worst = max(worst, float(np.abs(got - expected).max(initial=0.0)) / scale)
    if worst > PRUNED_OUTPUT_RTOL:
        raise ValueError(
            f"the pruned model's output differs from the model's on the example call "
            f"(relative error {worst:.3g}): some branch output is read by something other "
            "than the next multi-branch layer, which pruning does not support"
        )


def check_top_k_decided(real_masks, k: int, *, where: str = "the network") -> None:
    """Refuses to take the top-K of masks whose K-th and (K+1)-th largest entries tie.

    Such a top-K is decided by index, not by training (a network never trained has
    all its masks equal): pruning by it would silently keep the lowest-index blocks.
    """
    values = np.asarray(real_masks, np.float64)
    if k >= values.shape[-1]:
        return
    ordered = -np.sort(-values, axis=-1)
    ties = np.argwhere(ordered[..., k - 1] == ordered[..., k])
    if ties.size:
        row = [int(i) for i in ties[0]]
        raise ValueError(
            f"the masks of {where} tie at the K-th largest entry in row {row} (K = {k}), so "
            "their top-K would be chosen by index, not by training (a network never "
            "trained?); train the masks, or freeze() first to choose that connectivity"
        )


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
        (nothing to prune). Checked: binary with ``net.fan_in`` ones per row and the
        network's shapes (``real`` mode: its real-valued masks, shapes only).

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
    # Real-valued masks would prune nothing and a wrong K would surface later as a
    # confusing fan_in error: check what enters (binary, shapes, K ones per row).
    checks.check_connectivity(
        connectivity,
        arch.mask_shapes,
        k=net.fan_in if net.connectivity in ("learned", "random") else None,
        binary=net.connectivity != "real",
    )
    mats = [np.asarray(m) for m in connectivity]
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
