r"""Images/s of :func:`mcjax.export.predict` on the digits test set, eager vs jitted.

    python benchmarks/predict_speed.py                          # a fresh pruned 20,4,8 model
    python benchmarks/predict_speed.py --model runs/digits/pruned_model

"eager" runs the same preprocessing and network op by op (``jax.disable_jit()``), as
``predict`` did before it was jitted; "jitted" is ``predict`` itself, timed after one
call that compiles it (the compile time is reported apart). Each figure is the median
of ``--repeats`` timed calls on all 360 test images, synchronised with
``block_until_ready``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from mcjax import export, masks, models, prune
from mcjax.architectures import get_architecture
from mcjax.data import sources


def _fresh_model(path: str, data) -> export.LoadedModel:
    """A pruned ``20,4,8`` (K = 4) with random masks: the shapes of the digits run."""
    net = models.Network(
        get_architecture("20,4,8"), num_classes=10, in_channels=data.test_images.shape[-1]
    )
    variables = jax.jit(lambda key: models.init(key, net))(jax.random.key(0))
    params = dict(variables["params"])
    params["masks"] = jax.random.uniform(jax.random.key(1), net.masks_shape)
    pruned = prune.drop_dead_blocks(
        net, params, variables["batch_stats"], masks.top_k(params["masks"], net.fan_in)
    )
    pruned.save(path, mean_image=data.mean_image)
    return export.load(path)


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a pruned_model directory of a run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = sources.load_digits()
    with tempfile.TemporaryDirectory() as tmp:
        model = (
            export.load(args.model)
            if args.model
            else _fresh_model(os.path.join(tmp, "pruned_model"), data)
        )
    images = data.test_images
    n = images.shape[0]

    def eager():
        with jax.disable_jit():
            return export._logits(model, jnp.asarray(images))

    start = time.perf_counter()
    jitted_logits = jax.block_until_ready(export.predict(model, images))
    compile_seconds = time.perf_counter() - start
    eager_logits = eager()
    scale = float(np.linalg.norm(eager_logits))
    error = float(np.abs(np.asarray(jitted_logits) - np.asarray(eager_logits)).max())
    eager_s = _median_seconds(eager, args.repeats)
    jitted_s = _median_seconds(lambda: export.predict(model, images), args.repeats)
    result = {
        "images": n,
        "backend": jax.default_backend(),
        "eager_images_per_s": round(n / eager_s, 1),
        "jitted_images_per_s": round(n / jitted_s, 1),
        "first_jitted_call_s": round(compile_seconds, 2),
        "max_abs_diff_over_norm": error / max(scale, 1e-30),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
