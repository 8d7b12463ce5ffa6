"""The training program: the paper's four phases end to end (appendix E, docs/design.md §6).

``train_and_evaluate(config, workdir)`` takes the typed, checked config
(:class:`mcjax.training.config.Config`, made once by the entry point) and runs the pure
steps of :mod:`mcjax.training.steps` over the phases of :mod:`mcjax.training.schedule`.
Phase 1 trains weights and masks jointly; when phase 2 starts the masks are frozen
(:mod:`mcjax.connectivity`, recorded in the checkpointed state); phases 2-4 fine-tune the
weights; then the dead blocks are pruned and the run's outputs written
(:mod:`mcjax.training.outputs`). Everything random is a pure function of
``config.run.seed`` and the step, so a resumed run retraces the same path bit for bit.
Its resources (workdir lock, signal handlers, checkpointer, writers) live in one
``contextlib.ExitStack`` (:mod:`mcjax.training.workdir`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import jax
import numpy as np
from absl import logging

from mcjax import connectivity, parallel, prune
from mcjax.training import config as config_lib
from mcjax.training import distributed, outputs, steps
from mcjax.training import workdir as workdir_lib
from mcjax.training.metrics import MetricWriter, Progress, TrainLog
from mcjax.training.workdir import Checkpointer

__all__ = ["train_and_evaluate"]


def train_and_evaluate(
    config: config_lib.Config, workdir: str, *, force_resume: bool = False
) -> dict:
    """Runs the whole protocol in ``workdir``, resuming from its checkpoint; returns the summary.

    The workdir is locked for the run's life (:class:`mcjax.training.workdir.WorkdirLock`).
    Nothing in it is written before the checkpoint is restored, so a refused resume
    leaves every file as it was.

    Args:
      config: the training config, typed and checked
        (:func:`mcjax.training.config.from_config_dict`).
      workdir: the run's directory.
      force_resume: resume a checkpoint whose metadata names another seed, model or
        data set (the command line's ``--force_resume``).

    Raises:
      mcjax.training.workdir.Preempted: on SIGTERM/SIGINT, after saving a checkpoint at the
        step it stopped at (also during the final evaluation and outputs).
      FloatingPointError: on a non-finite loss or gradient, naming the step and phase;
        the last checkpoint (saved before it) is finished and intact.
      mcjax.training.config.ConfigError: the batches do not fit the data or these
        devices, or the checkpoint was made with another seed, model or data set.
      mcjax.training.workdir.CheckpointMismatch: the checkpoint is of another layout.
      mcjax.training.workdir.WorkdirBusy: another run holds the workdir.
      mcjax.training.workdir.BadWorkdir: one of the run's directories in the
        workdir is a file or a link.
      mcjax.training.workdir.LockLost: ``workdir/.lock`` was deleted or replaced
        (or the workdir removed) during the run; a checkpoint at the step it stopped
        at was saved when ``resumable`` (no other run held the workdir).
      OSError: the file system refused a write (full, read-only, a path replaced); the
        checkpoints finished before it are intact.
    """
    config.schedule.check_devices(jax.device_count())
    os.makedirs(workdir, exist_ok=True)
    with contextlib.ExitStack() as resources:
        lock = resources.enter_context(
            workdir_lib.WorkdirLock(workdir, is_primary=jax.process_index() == 0)
        )
        workdir_lib.check_layout(workdir)
        stop = resources.enter_context(workdir_lib.StopRequests())
        return _run(config, workdir, stop, lock, resources, force_resume)


def _close_all(*closers) -> None:
    """Closes resources after a failure; a second failure is logged, not raised over the first."""
    for close in closers:
        try:
            close()
        except Exception as error:  # the original error is the one to report
            logging.warning("while closing after an error: %s: %s", type(error).__name__, error)


def _write_frozen(workdir: str, step: int, net, state) -> None:
    """``connectivity_frozen.json``: the connectivity phases 2-4 use, as frozen at ``step``."""
    live = prune.live_blocks(np.asarray(state.fixed_masks))
    record = outputs.connectivity_record(net, state.fixed_masks, state.params["masks"], live)
    outputs.write_json(os.path.join(workdir, "connectivity_frozen.json"), {"step": step, **record})


def _run(
    config: config_lib.Config,
    workdir: str,
    stop: workdir_lib.StopRequests,
    lock: workdir_lib.WorkdirLock,
    resources,
    force_resume: bool,
):
    start_time = time.time()
    is_writer = jax.process_index() == 0
    run, protocol = config.run, config.schedule
    net = config.model.network(config.data)
    init_key, mask_key, augment_key = steps.seed_keys(run.seed)
    data = config.make_input(key=augment_key)
    protocol.check_fits(num_train=data.num_train, num_test=data.num_test, data_name=data.name)
    schedule = protocol.phases(data.num_train)
    tx = protocol.optimizer(schedule)
    mesh = distributed.data_mesh()
    step_fns, eval_fns = steps.compiled_steps(net, tx, mask_key, run.debug_inject_nan_at_step, mesh)
    place = distributed.Placement(mesh, data.batch_size, data.eval_batch_size)

    def run_evaluation(state, frozen: bool):
        batches = data.eval_batches(place.rows["eval"])
        return steps.evaluate(eval_fns[frozen], state, batches, functools.partial(place, "eval"))

    # Made where it lives (replicated over the mesh; the restore keeps these shardings):
    # with several processes a host-local array cannot be device_put onto the mesh.
    state = jax.jit(
        steps.create_state,
        static_argnums=(0, 1),
        out_shardings=None if mesh is None else parallel.state_sharding(mesh),
    )(net, tx, init_key)
    checkpointer = Checkpointer(workdir, keep=run.keep_checkpoints, is_primary=is_writer)
    # Unwinds last-in first-out: an error closes the writers and waits for the last save.
    resources.callback(lambda: _close_all(checkpointer.close))
    meta_base = {
        "model": config.model.to_dict(),  # with the compute dtype of the steps it saved
        "data": config.data.name,
        # What data the steps were trained on (every input has a fingerprint), and
        # where it was read from: a resume on other data is refused (the resume rules).
        "data_fingerprint": data.fingerprint,
        "data_dir": config.data.data_dir or "",
        "seed": run.seed,
        "prng_impl": str(jax.config.jax_default_prng_impl),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
    }
    restored = checkpointer.restore_latest(state)  # verified; corrupt steps moved aside
    recorded_fingerprint = None
    if restored is not None:
        state, meta, latest = restored
        if not force_resume:
            config_lib.check_checkpoint_meta(meta, meta_base, latest)
        recorded_fingerprint = meta.get("data_fingerprint")
        logging.info("Resumed from step %d (phase %s) in %s", latest, meta.get("phase"), workdir)
    # Only now, with a state that fits, is anything in the workdir written: config.json
    # at the first start, a record of what changed at every later one.
    if is_writer:
        config_lib.record_start(
            workdir,
            config,
            step=int(state.step),
            forced=force_resume,
            data_fingerprints=(recorded_fingerprint, data.fingerprint),
        )
    start_step, total, ends = int(state.step), schedule.total_steps, schedule.phase_ends
    frozen = bool(state.masks_frozen)  # the host's copy: it selects the compiled step
    writer = MetricWriter(workdir, resume_step=start_step, enabled=is_writer)
    progress = Progress(
        total_steps=total,
        start_step=start_step,
        images_per_step=data.batch_size,
        enabled=is_writer,
    )
    resources.callback(lambda: _close_all(progress.close, writer.close))
    log = TrainLog(
        net,
        schedule,
        protocol.learning_rates(schedule),
        writer=writer,
        progress=progress,
        on_non_finite=lambda: _finish_last_save(checkpointer),
    )
    logging.info(
        "%s: %d train / %d test examples, %d steps per epoch, phases of %s steps",
        data.name,
        data.num_train,
        data.num_test,
        schedule.steps_per_epoch,
        schedule.phase_steps,
    )
    log_every = max(1, run.log_every_steps)
    eval_every = max(1, round(float(run.eval_every_epochs) * schedule.steps_per_epoch))
    save_every = max(1, run.checkpoint_every_steps)
    reports_top5 = data.spec.top5
    saved = start_step  # the step of the newest checkpoint
    final = None  # the evaluation at the last step, reused for the summary

    def save(done: int) -> None:
        nonlocal saved
        log.flush(done, state.params)  # never checkpoint a non-finite state
        checkpointer.save(done, state, {**meta_base, "phase": schedule.phase(done - 1)})
        saved = done

    def stopped(done: int) -> workdir_lib.Preempted:
        log.flush(done, state.params)
        if saved != done:
            save(done)
        progress.close()
        writer.close()
        checkpointer.close()  # waits for the save and writes its checksums
        logging.warning("%s: stopped after step %d with a checkpoint", stop.signal_name, done)
        return workdir_lib.Preempted(done, stop.signal_name, checkpointer.directory)

    def lock_lost(done: int, reason: str | None) -> workdir_lib.LockLost:
        """Stops a run whose lock no longer excludes others (see WorkdirLock)."""
        reason = reason or "process 0 lost the workdir lock"
        blocked = lock.retake() if is_writer else None
        if distributed.any_process(blocked is not None):
            # Another run may own the workdir now: write nothing more into it.
            progress.close()
            return workdir_lib.LockLost(
                f"{reason} during the run, and the lock cannot be taken again: {blocked}; "
                f"this run stopped after step {done} without saving it (its last checkpoint "
                f"is of step {saved})",
                resumable=False,
            )
        log.flush(done, state.params)
        if saved != done:
            save(done)
        progress.close()
        writer.close()
        checkpointer.close()
        return workdir_lib.LockLost(
            f"{reason} during the run, so another run could have started in {workdir}; no "
            f"other run holds it now: this run took the lock again, saved a checkpoint at "
            f"step {done} and stopped; make sure no other run uses the workdir, then run "
            "the same command again to resume",
            resumable=True,
        )

    for step in range(start_step, total):
        # The state, not the step number, says whether the masks are frozen: a run
        # resumed past the end of phase 1 (another schedule, with --force_resume)
        # freezes at its first step, exactly once.
        if connectivity.must_freeze(net, phase=schedule.phase(step), frozen=frozen):
            state, frozen = steps.freeze_masks(net, state), True
            if is_writer and net.connectivity == "learned":
                _write_frozen(workdir, step, net, state)
            logging.info(
                "Step %d: masks frozen (%s)",
                step,
                connectivity.source(net.connectivity, frozen=True, train=True),
            )
        images, labels = place("train", data.train_batch(step, place.rows["train"]))
        state, metrics = step_fns[frozen](state, images, labels)
        log.add(metrics)
        checkpointer.record_finished()  # checksums of the last save, once it is done
        done = step + 1
        # The periodic work, in order; each waits for the step (the host syncs there).
        phase_end = done in ends
        log_now = done % log_every == 0 or phase_end
        eval_now = done % eval_every == 0 or phase_end
        save_now = done % save_every == 0 or phase_end
        # The lock first (a stat after every step): a run whose .lock was deleted may
        # share its workdir with another run, and writes nothing more before it knows.
        # Every process must stop at the same step (the save is collective), and each
        # sees its signal at a different point of its run-ahead dispatch: with several
        # processes, they agree at the steps where the host waits anyway.
        lock_problem = lock.lost()
        if jax.process_count() > 1:
            lost = log_now and distributed.any_process(lock_problem is not None)
        else:
            lost = lock_problem is not None
        if lost:
            raise lock_lost(done, lock_problem)
        if log_now or eval_now:
            log.flush(done, state.params)
        if eval_now:
            result = run_evaluation(state, frozen)
            _write_evaluation(writer, schedule, done, result, reports_top5)
            final = result if done == total else final
        if save_now:
            save(done)
        if jax.process_count() > 1:
            stopping = log_now and distributed.any_process(stop.requested)
        else:
            stopping = stop.requested
        if stopping and done < total:
            raise stopped(done)
    log.flush(total, state.params)
    progress.close()
    checkpointer.wait()

    # The last step is saved: a stop from here on only has to skip the outputs, which
    # the same command writes again (it resumes at the last step).
    def honour_stop():
        lock_problem = lock.lost()
        if distributed.any_process(lock_problem is not None):
            raise lock_lost(total, lock_problem)
        if distributed.any_process(stop.requested):
            raise stopped(total)

    honour_stop()
    if final is None:  # resumed from the last step: nothing was evaluated in this process
        final = run_evaluation(state, frozen)
        honour_stop()
    summary = outputs.finish(
        config.data,
        workdir,
        net,
        state,
        steps.eval_masks(net, state, frozen=frozen),
        data,
        final,
        wall_seconds=time.time() - start_time,
        is_writer=is_writer,
    )
    honour_stop()
    writer.close()
    checkpointer.close()
    return summary


def _finish_last_save(checkpointer: Checkpointer) -> str:
    checkpointer.wait()  # the last save (of a finite state) finishes and is recorded
    return f"the last checkpoint in {checkpointer.directory} is intact"


def _write_evaluation(writer, schedule, done: int, result: dict, reports_top5: bool) -> None:
    record = {
        "epoch": round(schedule.epoch(done), 4),
        "phase": schedule.phase(done - 1),
        "test/loss": result["loss"],
        "test/accuracy": result["accuracy"],
    }
    if reports_top5:
        record["test/accuracy_top5"] = result["accuracy_top5"]
    writer.write(done, record)
    logging.info("step %d: test accuracy %.4f", done, result["accuracy"])
