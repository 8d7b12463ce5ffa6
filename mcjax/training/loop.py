"""The paper's four-phase training (appendix E, DESIGN §3), end to end.

Phase 1 trains weights and masks jointly (K-hot masks sampled every step from
the real-valued ones, straight-through gradients); at the start of phase 2 each
block's connectivity is frozen to the top-K of its real-valued row; phases 2-4
fine-tune the weights with learning rates from the config. Then the dead blocks
are pruned. Everything random is a pure function of ``config.seed`` and the
step, so a run resumed from a checkpoint retraces the same path bit for bit.

``train_step`` and ``eval_step`` are pure module-level functions;
``train_and_evaluate(config, workdir)`` is the program.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mcjax import masks, models, optim, parallel, prune
from mcjax.data import in_memory
from mcjax.training import distributed, from_config, preemption, run_outputs, validation
from mcjax.training.checkpoint import Checkpointer
from mcjax.training.metric_writers import MetricWriter
from mcjax.training.progress import Progress

NUM_PHASES = 4


class TrainState(NamedTuple):
    """Everything a run needs to continue; a pytree.

    Attributes:
      step: int32 scalar, the number of steps taken.
      params: network parameters (with ``masks`` in ``learned``/``real`` modes).
      batch_stats: BN running statistics.
      opt_state: the :func:`mcjax.optim.maskconnect` state.
      connectivity: the fixed K-hot masks ``[L-1, C, C]`` (``random``: drawn at
        init; ``learned``: zeros until frozen to the top-K at phase 2); ``None``
        for ``full`` and ``real``.
    """

    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: Any
    connectivity: jax.Array | None


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Phase lengths in steps: the one place where epochs become steps."""

    steps_per_epoch: int
    phase_steps: tuple[int, ...]

    @classmethod
    def from_config(cls, config, num_train: int) -> Schedule:
        steps_per_epoch = num_train // int(config.batch_size)
        if steps_per_epoch < 1:
            raise ValueError(
                f"batch_size {config.batch_size} is larger than the {num_train} training examples"
            )
        phase_steps = tuple(max(1, round(float(e) * steps_per_epoch)) for e in config.phase_epochs)
        return cls(steps_per_epoch, phase_steps)

    @property
    def phase_ends(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.cumsum(self.phase_steps))

    @property
    def total_steps(self) -> int:
        return self.phase_ends[-1]

    def phase(self, step: int) -> int:
        """Phase (1-based) of the step about to run."""
        return 1 + int(np.searchsorted(np.asarray(self.phase_ends), step, side="right"))

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch


def learning_rates(config, schedule: Schedule) -> tuple[optax.Schedule, optax.Schedule]:
    """Weights: the per-phase rates; masks: ``mask_learning_rate`` in phase 1, then 0."""
    if len(config.weight_learning_rates) != len(config.phase_epochs):
        raise ValueError("need one weight learning rate per phase")
    ends = list(schedule.phase_ends)

    def piecewise(values, boundaries):
        return optax.join_schedules([optax.constant_schedule(v) for v in values], boundaries)

    return (
        piecewise(config.weight_learning_rates, ends[:-1]),
        piecewise([config.mask_learning_rate, 0.0], ends[:1]),
    )


def make_optimizer(config, schedule: Schedule) -> optax.GradientTransformation:
    """The :func:`mcjax.optim.maskconnect` optimizer with the rates of :func:`learning_rates`."""
    weights_lr, masks_lr = learning_rates(config, schedule)
    return optim.maskconnect(
        weight_learning_rate=weights_lr,
        mask_learning_rate=masks_lr,
        weight_decay=float(config.weight_decay),
        momentum=float(config.momentum),
        decay_norm_and_bias=bool(config.decay_norm_and_bias),
    )


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
    learn_masks: bool,
    axis_name: str | None = None,
    nan_at_step: int = -1,
) -> tuple[TrainState, dict]:
    """One SGD step.

    With ``learn_masks`` (phase 1 of ``learned``/``real``), ``learned`` samples
    K-hot masks with ``fold_in(key, step)`` and the real-valued masks get their
    straight-through gradient; otherwise the fixed connectivity is used and the
    masks get no gradient (so they do not move). ``nan_at_step >= 0`` makes the
    loss (and so every gradient) NaN at that step: ``config.debug_inject_nan_at_step``,
    for tests of the non-finite guard.

    Returns:
      The new state and scalar metrics: ``loss``, ``accuracy``, ``grad_norm``.
    """
    step_key = jax.random.fold_in(key, state.step)
    params = state.params
    trainable = params if learn_masks else {k: v for k, v in params.items() if k != "masks"}
    frozen = {} if learn_masks else {k: v for k, v in params.items() if k == "masks"}
    fixed = state.connectivity
    if axis_name is not None:
        # Differentiate per-device copies: grad with respect to a replicated value
        # would already sum over the axis, and the pmean below would leave it N times
        # too large. The frozen and fixed masks vary too, so that the straight-through
        # mask cotangent of masks.aggregate has the type of its input.
        trainable, frozen, fixed = jax.tree.map(
            lambda x: jax.lax.pcast(x, axis_name, to="varying"), (trainable, frozen, fixed)
        )

    def loss_fn(trainable):
        full = {**trainable, **frozen}
        if net.connectivity == "learned" and learn_masks:
            connectivity = masks.sample(step_key, full["masks"], net.fan_in)
        else:
            connectivity = models.forward_connectivity(net, full, fixed=fixed)
        logits, new_stats = models.apply(
            net,
            full,
            state.batch_stats,
            images,
            connectivity=connectivity,
            train=True,
            axis_name=axis_name,
        )
        loss = _cross_entropy(logits, labels)
        if nan_at_step >= 0:
            loss = loss * jnp.where(state.step == nan_at_step, jnp.nan, 1.0)
        return loss, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    grads = {**grads, **jax.tree.map(jnp.zeros_like, frozen)}
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


def eval_connectivity(net: models.Network, state: TrainState):
    """The connectivity evaluated: the top-K of the masks for ``learned`` (also in phase 1)."""
    if net.connectivity == "learned":
        return masks.top_k(state.params["masks"], net.fan_in)
    return models.forward_connectivity(net, state.params, fixed=state.connectivity)


def eval_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    *,
    net: models.Network,
) -> dict:
    """Sums over the valid examples of a (padded) batch: loss, top-1, top-5, count."""
    logits, _ = models.apply(
        net,
        state.params,
        state.batch_stats,
        images,
        connectivity=eval_connectivity(net, state),
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
    variables = models.init(key, net)
    connectivity = variables["connectivity"]
    if net.connectivity == "learned":
        connectivity = jnp.zeros(net.masks_shape, jnp.float32)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
        connectivity=connectivity,
    )


def _data_mesh():
    """A data-parallel mesh over every device of the job, or None on one device (plain jit)."""
    mesh = None if jax.device_count() == 1 else parallel.make_mesh()
    logging.info("%s", distributed.describe(mesh))
    return mesh


class _Placement:
    """Where batches go: this process's rows of each global batch, as global arrays."""

    def __init__(self, mesh, batch_size: int, eval_batch_size: int):
        self.mesh = mesh
        self.sizes = {"train": batch_size, "eval": eval_batch_size}
        whole = slice(None)
        self.rows = {
            kind: whole if mesh is None else parallel.process_rows(mesh, size)
            for kind, size in self.sizes.items()
        }

    def __call__(self, kind: str, local):
        if self.mesh is None:
            return local
        return parallel.global_batch(self.mesh, local, self.sizes[kind])


def _compiled_steps(net, tx, key, nan_at_step: int, mesh):
    """The jitted train steps (with and without mask learning) and eval step."""
    static = dict(net=net, tx=tx, key=key, nan_at_step=nan_at_step)
    if mesh is None:
        steps = {
            learn: jax.jit(
                functools.partial(train_step, learn_masks=learn, **static), donate_argnums=0
            )
            for learn in (True, False)
        }
        return steps, jax.jit(functools.partial(eval_step, net=net))
    steps = {
        learn: parallel.data_parallel_train_step(train_step, mesh, learn_masks=learn, **static)
        for learn in (True, False)
    }
    return steps, parallel.data_parallel_eval_step(eval_step, mesh, net=net)


def _seed_keys(seed: int):
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


def _mask_metrics(net, state, previous_top_k):
    if not net.has_masks:
        return {}, previous_top_k
    real = state.params["masks"]
    current = np.asarray(masks.top_k(real, net.fan_in))
    changed = 0 if previous_top_k is None else int((current != previous_top_k).sum()) // 2
    return {
        "masks/entropy": float(masks.mean_entropy(real)),
        "masks/changed": changed,
        "masks/min": float(real.min()),
        "masks/max": float(real.max()),
    }, current


def train_and_evaluate(config, workdir: str) -> dict:
    """Runs the whole protocol in ``workdir``, resuming from its checkpoint; returns the summary.

    Raises:
      mcjax.training.preemption.Preempted: on SIGTERM/SIGINT, after saving a checkpoint at the
        step it stopped at.
      FloatingPointError: on a non-finite loss or gradient, naming the step and phase;
        the last checkpoint (saved before it) is finished and intact.
    """
    with preemption.StopRequests() as stop:
        return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(config, workdir: str, stop: preemption.StopRequests) -> dict:
    start_time = time.time()
    validation.validate_config(config, num_devices=jax.device_count())
    os.makedirs(workdir, exist_ok=True)
    is_writer = jax.process_index() == 0
    multi_process = jax.process_count() > 1
    net = from_config.network(config)
    init_key, mask_key, augment_key = _seed_keys(int(config.seed))
    data = in_memory.make_input(config, key=augment_key)
    schedule = Schedule.from_config(config, data.num_train)
    tx = make_optimizer(config, schedule)
    if is_writer:
        run_outputs.write_json(os.path.join(workdir, "config.json"), config.to_dict())

    mesh = _data_mesh()
    step_fns, eval_fn = _compiled_steps(
        net, tx, mask_key, int(config.get("debug_inject_nan_at_step", -1)), mesh
    )
    place = _Placement(mesh, data.batch_size, data.eval_batch_size)

    def run_evaluation(state):
        return evaluate(
            eval_fn,
            state,
            data.eval_batches(place.rows["eval"]),
            functools.partial(place, "eval"),
        )

    # Made where it lives (replicated over the mesh; the restore keeps these shardings):
    # with several processes a host-local array cannot be device_put onto the mesh.
    state = jax.jit(
        create_state,
        static_argnums=(0, 1),
        out_shardings=None if mesh is None else parallel.state_sharding(mesh),
    )(net, tx, init_key)
    checkpointer = Checkpointer(workdir, keep=int(config.keep_checkpoints), is_primary=is_writer)
    meta_base = {
        "model": config.model.to_dict(),
        "data": config.data.name,
        "seed": int(config.seed),
        "prng_impl": str(jax.config.jax_default_prng_impl),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
    }
    restored = checkpointer.restore_latest(state)  # verified; corrupt steps moved aside
    if restored is not None:
        state, meta, latest = restored
        logging.info("Resumed from step %d (phase %s) in %s", latest, meta.get("phase"), workdir)
    start_step = int(state.step)
    writer = MetricWriter(workdir, resume_step=start_step, enabled=is_writer)
    total = schedule.total_steps
    progress = Progress(
        total_steps=total,
        start_step=start_step,
        images_per_step=data.batch_size,
        enabled=is_writer,
    )
    logging.info(
        "%s: %d train / %d test examples, %d steps per epoch, phases of %s steps",
        data.name,
        data.num_train,
        data.num_test,
        schedule.steps_per_epoch,
        schedule.phase_steps,
    )
    log_every = max(1, int(config.log_every_steps))
    eval_every = max(1, round(float(config.eval_every_epochs) * schedule.steps_per_epoch))
    save_every = max(1, int(config.checkpoint_every_steps))
    learns_masks = net.has_masks
    previous_top_k = None
    pending: list[dict] = []

    def flush_metrics(step: int):
        nonlocal previous_top_k
        if not pending:
            return
        fetched = jax.device_get(pending)
        pending.clear()
        losses = np.array([m["loss"] for m in fetched])
        finite = np.isfinite(losses) & np.isfinite([m["grad_norm"] for m in fetched])
        if not finite.all():
            bad = step - len(fetched) + int(np.argmin(finite))
            checkpointer.wait()  # the last save (of a finite state) finishes and is recorded
            raise FloatingPointError(
                f"non-finite loss or gradient at step {bad} (phase {schedule.phase(bad)}); "
                f"the last checkpoint in {checkpointer.directory} is intact"
            )
        record = {
            "epoch": round(schedule.epoch(step), 4),
            "phase": schedule.phase(step - 1),
            "train/loss": float(losses.mean()),
            "train/accuracy": float(np.mean([m["accuracy"] for m in fetched])),
            "train/grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
            "lr/weights": float(tx_weight_lr(step - 1)),
            "lr/masks": float(tx_mask_lr(step - 1)) if learns_masks else 0.0,
        }
        mask_stats, previous_top_k = _mask_metrics(net, state, previous_top_k)
        record.update(mask_stats)
        writer.write(step, record)
        progress.update(step, f"phase {record['phase']} loss {record['train/loss']:.3f}")

    ends = schedule.phase_ends
    saved = start_step  # the step of the newest checkpoint
    final = None  # the evaluation at the last step, reused for the summary
    tx_weight_lr, tx_mask_lr = learning_rates(config, schedule)

    for step in range(start_step, total):
        if net.connectivity == "learned" and step == ends[0]:
            # Phase 2 starts: freeze each block's inputs to the top-K of its row.
            state = state._replace(connectivity=masks.top_k(state.params["masks"], net.fan_in))
            if is_writer:
                live = prune.live_blocks(np.asarray(state.connectivity))
                run_outputs.write_json(
                    os.path.join(workdir, "connectivity_frozen.json"),
                    {
                        "step": step,
                        **run_outputs.connectivity_record(
                            net, state.connectivity, state.params["masks"], live
                        ),
                    },
                )
            logging.info(
                "Step %d: connectivity frozen to the top-%d of the masks", step, net.fan_in
            )
        learn = learns_masks and step < ends[0]
        images, labels = place("train", data.train_batch(step, place.rows["train"]))
        state, metrics = step_fns[learn](state, images, labels)
        pending.append(metrics)
        checkpointer.record_finished()  # checksums of the last save, once it is done
        done = step + 1
        phase_end = done in ends
        synced = done % log_every == 0 or phase_end  # the host waits for the step here
        if synced:
            flush_metrics(done)
        if done % eval_every == 0 or phase_end:
            flush_metrics(done)
            result = run_evaluation(state)
            writer.write(
                done,
                {
                    "epoch": round(schedule.epoch(done), 4),
                    "phase": schedule.phase(step),
                    "test/loss": result["loss"],
                    "test/accuracy": result["accuracy"],
                    **(
                        {"test/accuracy_top5": result["accuracy_top5"]}
                        if data.name == "imagenet"
                        else {}
                    ),
                },
            )
            logging.info("step %d: test accuracy %.4f", done, result["accuracy"])
            if done == total:
                final = result
        if done % save_every == 0 or phase_end:
            flush_metrics(done)  # never checkpoint a non-finite state
            checkpointer.save(done, state, {**meta_base, "phase": schedule.phase(step)})
            saved = done
        # Every process must stop at the same step (the save is collective), and each
        # sees its signal at a different point of its run-ahead dispatch: with several
        # processes, they agree at the steps where the host waits anyway.
        if multi_process:
            stopping = synced and distributed.any_process(stop.requested)
        else:
            stopping = stop.requested
        if stopping and done < total:
            flush_metrics(done)
            if saved != done:
                checkpointer.save(done, state, {**meta_base, "phase": schedule.phase(step)})
            progress.close()
            writer.close()
            checkpointer.close()  # waits for the save and writes its checksums
            logging.warning("%s: stopped after step %d with a checkpoint", stop.signal_name, done)
            raise preemption.Preempted(done, stop.signal_name, checkpointer.directory)
    flush_metrics(total)
    progress.close()
    checkpointer.wait()

    if final is None:  # resumed from the last step: nothing was evaluated in this process
        final = run_evaluation(state)
    summary = run_outputs.finish(
        config,
        workdir,
        net,
        state,
        eval_connectivity(net, state),
        data,
        final,
        wall_seconds=time.time() - start_time,
        is_writer=is_writer,
    )
    writer.close()
    checkpointer.close()
    return summary
