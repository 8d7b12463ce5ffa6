"""The pure training code: state, train and eval steps, evaluation, compiled steps.

``train_step`` and ``eval_step`` are pure module-level functions of the state and a
batch (static arguments by keyword); :func:`compiled_steps` jits them (or shard_maps them
over a data mesh, :mod:`mcjax.parallel`). Which masks a step uses is decided by
:mod:`mcjax.connectivity`. Nothing here reads a config or touches a file.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mcjax import connectivity, models, parallel

__all__ = [
    "TrainState",
    "compiled_steps",
    "create_state",
    "eval_masks",
    "eval_step",
    "evaluate",
    "freeze_masks",
    "seed_keys",
    "train_step",
]


class TrainState(NamedTuple):
    """Everything a run needs to continue; a pytree.

    Attributes:
      step: int32 scalar, the number of steps taken.
      params: network parameters (with ``masks`` in ``learned``/``real`` modes).
      batch_stats: BN running statistics.
      opt_state: the :func:`mcjax.optim.maskconnect` state.
      fixed_masks: the fixed K-hot masks ``[L-1, C, C]`` float32 (``random``: drawn at
        init; ``learned``: the top-K taken when frozen); ``None`` for ``full``/``real``.
        Which masks a step uses is decided by :mod:`mcjax.connectivity`.
      masks_frozen: bool scalar: the masks no longer learn (phases 2-4; from the
        start for ``full``/``random``). Checkpointed, so a resumed run knows it.
    """

    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: Any
    fixed_masks: jax.Array | None
    masks_frozen: jax.Array


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    *,
    net: models.Network,
    tx: optax.GradientTransformation,
    key: jax.Array,
    frozen: bool,
    axis_name: str | None = None,
    nan_at_step: int = -1,
) -> tuple[TrainState, dict]:
    """One SGD step.

    ``frozen`` (static: it selects the program) is the host's copy of
    ``state.masks_frozen``. The masks the step uses come from
    :func:`mcjax.connectivity.step_masks` (``learned`` samples K-hot masks
    with ``fold_in(key, step)`` while the masks learn); only while they learn do the
    real-valued masks get their (straight-through) gradient. ``nan_at_step >= 0`` makes
    the loss (and so every gradient) NaN at that step:
    ``config.debug_inject_nan_at_step``, for tests of the non-finite guard.

    Returns:
      The new state and scalar metrics: ``loss``, ``accuracy``, ``grad_norm``.
    """
    step_key = jax.random.fold_in(key, state.step)
    params = state.params
    learn = connectivity.learns_masks(net, frozen=frozen)
    trainable = params if learn else {k: v for k, v in params.items() if k != "masks"}
    fixed_params = {} if learn else {k: v for k, v in params.items() if k == "masks"}
    fixed_masks = state.fixed_masks
    if axis_name is not None:
        # Differentiate per-device copies: grad with respect to a replicated value
        # would already sum over the axis, and the pmean below would leave it N times
        # too large. The frozen and fixed masks vary too, so that the straight-through
        # mask cotangent of masks.aggregate has the type of its input.
        trainable, fixed_params, fixed_masks = jax.tree.map(
            lambda x: jax.lax.pcast(x, axis_name, to="varying"),
            (trainable, fixed_params, fixed_masks),
        )

    def loss_fn(trainable):
        full = {**trainable, **fixed_params}
        step_masks = connectivity.step_masks(
            net, full, fixed_masks, frozen=frozen, train=True, key=step_key
        )
        logits, new_stats = models.apply(
            net,
            full,
            state.batch_stats,
            images,
            connectivity=step_masks,
            train=True,
            axis_name=axis_name,
        )
        loss = _cross_entropy(logits, labels)
        if nan_at_step >= 0:
            loss = loss * jnp.where(state.step == nan_at_step, jnp.nan, 1.0)
        return loss, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    grads = {**grads, **jax.tree.map(jnp.zeros_like, fixed_params)}
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        loss = jax.lax.pmean(loss, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    accuracy = (jnp.argmax(logits, -1) == labels).mean()
    if axis_name is not None:
        accuracy = jax.lax.pmean(accuracy, axis_name)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm}
    new_state = state._replace(
        step=state.step + 1, params=new_params, batch_stats=new_stats, opt_state=opt_state
    )
    return new_state, metrics


def eval_masks(net: models.Network, state: TrainState, *, frozen: bool):
    """The masks evaluated and exported (the top-K of the masks for ``learned`` in phase 1)."""
    return connectivity.step_masks(net, state.params, state.fixed_masks, frozen=frozen, train=False)


def freeze_masks(net: models.Network, state: TrainState) -> TrainState:
    """The state with its masks frozen (phase 2 starts): ``learned`` fixes the top-K."""
    return state._replace(
        fixed_masks=connectivity.freeze(net, state.params, state.fixed_masks),
        masks_frozen=jnp.ones((), jnp.bool_),
    )


def eval_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    *,
    net: models.Network,
    frozen: bool,
) -> dict:
    """Sums over the valid examples of a (padded) batch: loss, top-1, top-5, count."""
    logits, _ = models.apply(
        net,
        state.params,
        state.batch_stats,
        images,
        connectivity=eval_masks(net, state, frozen=frozen),
        train=False,
    )
    valid = valid.astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return {
        "loss": (losses * valid).sum(),
        "correct": ((jnp.argmax(logits, -1) == labels) * valid).sum(),
        "correct_top5": ((top5 == labels[:, None]).any(-1) * valid).sum(),
        "count": valid.sum(),
    }


def create_state(net: models.Network, tx, key: jax.Array) -> TrainState:
    """The state before step 0 (masks not frozen where they learn)."""
    variables = models.init(key, net)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
        fixed_masks=connectivity.initial_fixed_masks(net, variables),
        masks_frozen=jnp.asarray(not net.has_masks),
    )


def compiled_steps(net, tx, key, nan_at_step: int, mesh):
    """The jitted train and eval steps, keyed by whether the masks are frozen."""
    static = dict(net=net, tx=tx, key=key, nan_at_step=nan_at_step)
    frozen_values = (False, True)
    if mesh is None:
        steps = {
            frozen: jax.jit(
                functools.partial(train_step, frozen=frozen, **static), donate_argnums=0
            )
            for frozen in frozen_values
        }
        evals = {
            frozen: jax.jit(functools.partial(eval_step, net=net, frozen=frozen))
            for frozen in frozen_values
        }
        return steps, evals
    steps = {
        frozen: parallel.data_parallel_train_step(train_step, mesh, frozen=frozen, **static)
        for frozen in frozen_values
    }
    evals = {
        frozen: parallel.data_parallel_eval_step(eval_step, mesh, net=net, frozen=frozen)
        for frozen in frozen_values
    }
    return steps, evals


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Independent keys of ``seed``: init, per-step mask samples, per-example augmentation."""
    root = jax.random.key(seed)
    # Independent streams: init, per-step mask samples, per-example augmentation.
    return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)


def evaluate(eval_fn, state: TrainState, batches, place=lambda x: x) -> dict:
    """Loss, top-1 and top-5 accuracy over every test example (padded batches masked).

    ``batches``: ``(images, labels, valid)`` (this process's rows of each batch, which
    ``place`` turns into global arrays).
    """
    totals = None
    for batch in batches:
        sums = eval_fn(state, *place(batch))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {
        "loss": float(totals["loss"]) / count,
        "accuracy": float(totals["correct"]) / count,
        "accuracy_top5": float(totals["correct_top5"]) / count,
        "count": int(count),
    }
