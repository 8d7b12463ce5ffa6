"""Streaming ImageNet (ILSVRC 2012) input: host threads decode JPEGs with PIL.

:class:`StreamingInput` is ImageNet's :class:`~mcjax.data.types.Input`; it serves the
batches that :class:`ImageNetInput` (the reader and its thread pool) decodes.

Source: tensorflow-datasets ``imagenet2012`` prepared in ``array_record`` format
(splits ``train`` and ``validation``), read without TensorFlow; it is never
downloaded (ImageNet needs a manual download), and a missing copy raises
:class:`mcjax.data.sources.DataError` at once, saying how to prepare it.

Views (ResNeXt / fb.resnet.torch protocol, sizes for ``image_size=224``):

* train: random-resized crop (area fraction uniform in ``[0.08, 1]``, log-uniform
  aspect ratio in ``[3/4, 4/3]``, 10 tries, then a centre crop of the clamped
  ratio) resized bilinearly to 224x224, horizontal flip with probability 1/2;
* eval: shorter side resized to 256 (``image_size * 256 / 224``), centre 224x224;
* both: ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD`` per RGB channel.

Batches are float32 ``[B, S, S, 3]`` images and int32 ``[B]`` labels. The train
view of an example is a pure function of ``(seed, step, its index in the global
batch)``: its numpy ``Generator`` is seeded from exactly those, so the batch of a
step is the same whatever thread, host or call order produced it, and a resumed
run sees the same images.

Prefetch: :meth:`ImageNetInput.train_batch` serves step ``s`` and, when the
caller's indices follow :func:`mcjax.data.batch_order.train_batch_indices` with the same
seed, starts decoding steps ``s+1 .. s+prefetch`` in the thread pool; a
prefetched batch is only used if its step, indices and positions match the
request exactly, so prefetching never changes a result.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import math
import os
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcjax.data import batch_order, decode, registry
from mcjax.data.sources import DataError, open_tfds_splits, tfds_fingerprint

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageNetInput",
    "StreamingInput",
    "center_crop_view",
    "random_resized_crop_box",
    "random_resized_crop_view",
]

# Per-channel RGB statistics on the [0, 1] scale (the usual ImageNet values).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

_PREPARE_IMAGENET = (
    "ImageNet cannot be downloaded automatically: download ILSVRC2012_img_train.tar and "
    "ILSVRC2012_img_val.tar from https://image-net.org (registration required) into "
    "MANUAL_DIR, run `tfds build imagenet2012 --manual_dir MANUAL_DIR "
    "--file_format=array_record --data_dir DIR` on a machine with TensorFlow, then pass "
    "`--config.data.data_dir=DIR`"
)


def random_resized_crop_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of an Inception-style random crop of the image.

    Area fraction uniform in ``scale``, aspect ratio (w/h) log-uniform in ``ratio``;
    after ``attempts`` misses, the largest centred crop with the ratio clamped.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _decode_rgb(encoded: bytes):
    """The RGB image of encoded bytes, for a ``with`` block (:func:`mcjax.data.decode.rgb_image`:
    CMYK, grey and palette JPEGs exist in ImageNet; the threads' memory is bounded)."""
    return decode.rgb_image(io.BytesIO(encoded))


def _normalize(pixels: np.ndarray) -> np.ndarray:
    x = pixels.astype(np.float32) * np.float32(1 / 255)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def random_resized_crop_view(
    encoded: bytes, rng: np.random.Generator, *, image_size: int = 224
) -> np.ndarray:
    """Train view of one encoded image: float32 ``[S, S, 3]``, normalised (module doc)."""
    from PIL import Image

    with _decode_rgb(encoded) as image:
        box = random_resized_crop_box(rng, *image.size)
        # Crop and resize in one call: PIL resamples only the box (antialiased).
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
        pixels = np.asarray(image)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return _normalize(pixels)


def center_crop_view(encoded: bytes, *, image_size: int = 224, resize: int = 256) -> np.ndarray:
    """Eval view: shorter side to ``resize``, centre ``image_size`` crop; float32 ``[S, S, 3]``."""
    from PIL import Image

    with _decode_rgb(encoded) as image:
        width, height = image.size
        factor = resize / min(width, height)
        new_w = max(image_size, round(width * factor))
        new_h = max(image_size, round(height * factor))
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
        pixels = np.asarray(image)
    return _normalize(pixels)


@dataclasses.dataclass
class _PendingBatch:
    """A batch being filled by pool tasks; ``signature`` identifies the request."""

    signature: tuple[Any, ...]
    images: np.ndarray
    labels: np.ndarray
    futures: list[concurrent.futures.Future]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        for future in self.futures:
            future.result()  # re-raises a worker's DataError here, in the caller
        return self.images, self.labels

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()


class ImageNetInput:
    """ImageNet batches decoded and augmented by a host thread pool (module docstring).

    Args:
      data_dir: tfds data_dir holding ``imagenet2012`` in ``array_record`` format
        (None or "": tfds's default).
      seed: seeds the train augmentation (with the step and the global-batch index).
      image_size: output height = width (224).
      eval_resize: shorter side before the eval centre crop (``image_size * 256/224``).
      num_workers: decoding threads (default: the CPU count).
      prefetch: how many train/eval batches to decode ahead of the one requested.
      global_batch_size: the global batch size when each call passes only this
        host's slice (``positions``); None: every call passes the whole batch.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        *,
        seed: int,
        image_size: int = 224,
        eval_resize: int | None = None,
        num_workers: int | None = None,
        prefetch: int = 2,
        global_batch_size: int | None = None,
        dataset_name: str = "imagenet2012",
        train_split: str = "train",
        eval_split: str = "validation",
    ):
        import tensorflow_datasets as tfds

        builder, sources = open_tfds_splits(
            dataset_name,
            data_dir,
            (train_split, eval_split),
            # Raw JPEG bytes: PIL decodes them in our threads, not tfds per access.
            decoders={"image": tfds.decode.SkipDecoding()},
            how_to_prepare=_PREPARE_IMAGENET,
        )
        self.dataset_name = dataset_name
        # What data this is (checkpoints record it): the prepared files of both splits.
        self.fingerprint = tfds_fingerprint(builder, (train_split, eval_split))
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.eval_resize = int(eval_resize or round(image_size * 256 / 224))
        self.num_classes = int(builder.info.features["label"].num_classes)
        self._train: Sequence[Mapping[str, Any]] = sources[train_split]
        self._eval: Sequence[Mapping[str, Any]] = sources[eval_split]
        self.num_train = len(self._train)
        self.num_test = len(self._eval)
        self.prefetch = max(0, int(prefetch))
        self.global_batch_size = global_batch_size
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=num_workers or os.cpu_count() or 1, thread_name_prefix="imagenet"
        )
        # Stop the threads when the object is dropped without close().
        self._finalizer = weakref.finalize(
            self, self._pool.shutdown, wait=False, cancel_futures=True
        )
        self._pending: dict[int, _PendingBatch] = {}

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Cancel queued work and stop the decoding threads."""
        for batch in self._pending.values():
            batch.cancel()
        self._pending.clear()
        self._finalizer()

    def __enter__(self) -> ImageNetInput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ per example

    def _record(self, source, split: str, index: int) -> tuple[bytes, int, str]:
        """``(encoded image, label, description for error messages)`` of one example."""
        example = source[index]
        file_name = example.get("file_name", b"")
        if isinstance(file_name, bytes):
            file_name = file_name.decode("utf-8", "replace")
        what = f"{self.dataset_name} {split} example {index}" + (
            f" ({file_name})" if file_name else ""
        )
        label = int(example["label"])
        if not 0 <= label < self.num_classes:
            raise DataError(
                f"{what} has label {label} outside [0, {self.num_classes}); "
                "prepare the data set again."
            )
        return example["image"], label, what

    def _fill_train(self, batch: _PendingBatch, row: int, index: int, step: int, position: int):
        encoded, label, what = self._record(self._train, "train", index)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step, position]))
        batch.images[row] = self._decode(
            what, random_resized_crop_view, encoded, rng, image_size=self.image_size
        )
        batch.labels[row] = label

    def _fill_eval(self, batch: _PendingBatch, row: int, index: int):
        encoded, label, what = self._record(self._eval, "validation", index)
        batch.images[row] = self._decode(
            what,
            center_crop_view,
            encoded,
            image_size=self.image_size,
            resize=self.eval_resize,
        )
        batch.labels[row] = label

    @staticmethod
    def _decode(what: str, view, *args, **kwargs) -> np.ndarray:
        try:
            return view(*args, **kwargs)
        except Exception as err:  # any decoder failure means a corrupt record
            raise DataError(
                f"cannot decode {what} ({type(err).__name__}: {err}); prepare the data set again."
            ) from err

    def _new_batch(self, signature: tuple[Any, ...], size: int) -> _PendingBatch:
        images = np.empty((size, self.image_size, self.image_size, 3), np.float32)
        return _PendingBatch(signature, images, np.empty((size,), np.int32), [])

    # ------------------------------------------------------------------ train

    def _submit_train(self, step: int, indices: np.ndarray, positions: np.ndarray):
        batch = self._new_batch(
            ("train", step, indices.tobytes(), positions.tobytes()), len(indices)
        )
        batch.futures = [
            self._pool.submit(self._fill_train, batch, row, int(i), step, int(p))
            for row, (i, p) in enumerate(zip(indices, positions, strict=True))
        ]
        return batch

    def _planned_indices(
        self, step: int, positions: np.ndarray, batch_size: int
    ) -> np.ndarray | None:
        """This host's indices of ``step`` if the caller follows ``train_batch_indices``
        (None where that order cannot produce such a request)."""
        global_batch = self.global_batch_size or batch_size
        if not 0 < global_batch <= self.num_train or positions.max(initial=0) >= global_batch:
            return None
        order = batch_order.train_batch_indices(self.seed, step, self.num_train, global_batch)
        return order[positions]

    def train_batch(
        self, step: int, indices: np.ndarray, *, positions: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augmented ``(images float32 [B, S, S, 3], labels int32 [B])`` of ``step``.

        ``indices``: training-example indices ``[B]``; ``positions``: their indices in
        the global batch (default ``arange(B)``, the whole global batch).
        """
        step = int(step)
        indices = np.asarray(indices, np.int64)
        if indices.ndim != 1 or (
            indices.size and not 0 <= indices.min() <= indices.max() < self.num_train
        ):
            raise ValueError(f"indices must be a 1-D array in [0, {self.num_train})")
        positions = (
            np.arange(len(indices), dtype=np.int64)
            if positions is None
            else np.asarray(positions, np.int64)
        )
        if positions.shape != indices.shape or positions.min(initial=0) < 0:
            raise ValueError("positions must be non-negative, with the shape of indices")
        signature = ("train", step, indices.tobytes(), positions.tobytes())
        batch = self._pending.pop(step, None)
        if batch is not None and batch.signature != signature:
            batch.cancel()
            batch = None
        if batch is None:
            batch = self._submit_train(step, indices, positions)
        # Earlier prefetched steps will not be asked for again.
        for stale in [s for s in self._pending if s < step]:
            self._pending.pop(stale).cancel()
        planned = self._planned_indices(step, positions, len(indices))
        if self.prefetch and planned is not None and np.array_equal(indices, planned):
            for ahead in range(step + 1, step + 1 + self.prefetch):
                if ahead not in self._pending:
                    planned = self._planned_indices(ahead, positions, len(indices))
                    self._pending[ahead] = self._submit_train(ahead, planned, positions)
        return batch.result()

    # ------------------------------------------------------------------ eval

    def eval_batches(
        self, batch_size: int, *, rows: slice = slice(None)
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(images float32 [B,S,S,3], labels int32 [B], valid bool [B])`` over the
        validation split in order; the last batch is padded with zero images (label 0)
        marked invalid, so every example counts exactly once. ``rows``: this host's
        rows of each batch (default all)."""
        window: collections.deque[tuple[_PendingBatch, np.ndarray]] = collections.deque()
        plan = batch_order.eval_batches(self.num_test, batch_size)
        try:
            for all_indices, all_valid in plan:
                indices, valid = all_indices[rows], all_valid[rows]
                batch = self._new_batch(("eval", indices.tobytes()), len(indices))
                # Padding rows are masked out: zeros, not a decode of example 0.
                batch.images[~valid] = 0.0
                batch.labels[~valid] = 0
                batch.futures = [
                    self._pool.submit(self._fill_eval, batch, row, int(i))
                    for row, i in enumerate(indices)
                    if valid[row]
                ]
                window.append((batch, valid))
                if len(window) > self.prefetch:
                    ready, ready_valid = window.popleft()
                    yield (*ready.result(), ready_valid)
            while window:
                ready, ready_valid = window.popleft()
                yield (*ready.result(), ready_valid)
        finally:
            for batch, _ in window:  # an abandoned iterator leaves no queued work
                batch.cancel()


class StreamingInput:
    """ImageNet through host threads: serves :class:`mcjax.data.types.Input` (its members
    are documented there) with the batches of an :class:`ImageNetInput`.

    ``fingerprint``: the prepared files' (:func:`mcjax.data.sources.tfds_fingerprint`).
    """

    def __init__(
        self,
        name: str,
        *,
        data_dir: str | None,
        image_size: int,
        seed: int,
        batch_size: int,
        eval_batch_size: int,
    ):
        self.spec = registry.get(name)
        self.name = name
        self.source = ImageNetInput(
            data_dir=data_dir or None,
            image_size=image_size,
            seed=seed,
            global_batch_size=batch_size,
        )
        self.num_classes = self.spec.num_classes
        self.fingerprint: str = self.source.fingerprint
        self.num_train = self.source.num_train
        self.num_test = self.source.num_test
        self.seed, self.batch_size, self.eval_batch_size = seed, batch_size, eval_batch_size
        # Per-channel normalisation for the exported model (images pre-cropped to 224).
        self.mean_image = IMAGENET_MEAN
        self.std = IMAGENET_STD
        self.crop = None

    def train_batch(self, step: int, rows: slice = slice(None)) -> tuple[jax.Array, jax.Array]:
        indices, positions = batch_order.train_rows(
            self.seed, step, self.num_train, self.batch_size, rows
        )
        images, labels = self.source.train_batch(step, indices, positions=positions)
        return jnp.asarray(images), jnp.asarray(labels)

    def eval_batches(
        self, rows: slice = slice(None)
    ) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
        for images, labels, valid in self.source.eval_batches(self.eval_batch_size, rows=rows):
            yield jnp.asarray(images), jnp.asarray(labels), jnp.asarray(valid)
