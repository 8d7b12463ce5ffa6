"""Every branch formulation computes the reference network, forward and gradients, in float64.

The formulations (``mcjax.blocks.FORMULATIONS``: 1x1 convolutions as XLA convolutions or as
matrix products, the C 3x3 convolutions one per branch, as one grouped convolution, through
``vmap``, or thin branches merged into block-diagonal kernels) reorder float32 sums, so in
float32 a wrong formulation could hide under the tolerance that reordering needs. In float64
the same reorderings differ by ~1e-15 and a real difference (a wrong block, a missing
branch, a shifted channel) stands out by many orders of magnitude.

The reference is written here from docs/design.md §1-2 with nothing but
``jax.lax.conv_general_dilated`` and ``jnp``: one convolution per block, batch norm from its
definition, block inputs ``x_j = sum_k m[j, k] y_k`` as a sum, the straight-through mask
gradient as ``binary + real - stop_gradient(real)``. The network has a stride-1 module with
an identity shortcut and a stride-2 module with the shared projection, thin branches (so that
``merged`` merges) and C = 3 (so that runs of 2 leave a run of 1).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import blocks, layers, masks, models
from mcjax.architectures import Architecture, ModuleSpec

C, K, CLASSES = 3, 2, 5
ARCH = Architecture(
    name="two-strides",
    stem="cifar",
    stem_channels=4,
    modules=(
        ModuleSpec(in_channels=4, bottleneck=2, out_channels=4, stride=1, cardinality=C),
        ModuleSpec(in_channels=4, bottleneck=3, out_channels=6, stride=2, cardinality=C),
    ),
)
NAMED = [name for name in blocks.BRANCH_IMPLS if name != "auto"]
# Float64 sums in another order differ by a few ulps (1e-16) per accumulation; a wrong
# formulation by O(1) of some element.
RTOL = 1e-9


def _conv(x, kernel, stride=1):
    pad = (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )


def _bn(x, params, stats, train):
    if train:
        mean = x.mean(axis=(0, 1, 2))
        var = jnp.square(x - mean).mean(axis=(0, 1, 2))
        m = layers.BN_MOMENTUM
        new = {"mean": m * stats["mean"] + (1 - m) * mean, "var": m * stats["var"] + (1 - m) * var}
    else:
        mean, var, new = stats["mean"], stats["var"], stats
    y = (x - mean) / jnp.sqrt(var + layers.BN_EPSILON) * params["scale"] + params["bias"]
    return y, new


def _take(tree, j):
    return jax.tree.map(lambda a: a[j], tree)


def _stack(trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _reference(params, stats, images, mixing, train, aggregation):
    """Logits and new statistics; ``mixing`` None (full) or the L-1 ``[C, C]`` masks."""
    x, stem_bn = _bn(_conv(images, params["stem"]["conv"]), params["stem"]["bn"],
                     stats["stem"]["bn"], train)  # fmt: skip
    x = jax.nn.relu(x)
    new_stats = {"stem": {"bn": stem_bn}, "modules": []}
    outputs = None
    for i, (spec, p, s) in enumerate(
        zip(ARCH.modules, params["modules"], stats["modules"], strict=True)
    ):
        per_branch_bn3 = p["bn3"]["scale"].ndim == 2
        if mixing is None or i == 0:
            inputs = [x] * C
        else:
            inputs = [sum(mixing[i - 1][j, k] * outputs[k] for k in range(C)) for j in range(C)]
            if aggregation == "mean":
                inputs = [v / K for v in inputs]
        fs, ns = [], []
        for j, xj in enumerate(inputs):
            h, s1 = _bn(_conv(xj, p["conv1"][j]), _take(p["bn1"], j), _take(s["bn1"], j), train)
            h = _conv(jax.nn.relu(h), p["conv2"][j], spec.stride)
            h, s2 = _bn(h, _take(p["bn2"], j), _take(s["bn2"], j), train)
            f = _conv(jax.nn.relu(h), p["conv3"][j])
            branch = {"bn1": s1, "bn2": s2}
            if per_branch_bn3:
                f, branch["bn3"] = _bn(f, _take(p["bn3"], j), _take(s["bn3"], j), train)
            fs.append(f)
            ns.append(branch)
        module_stats = {name: _stack([b[name] for b in ns]) for name in ns[0]}
        if "shortcut" in p:
            n = inputs[0].shape[0]
            shortcut = _conv(jnp.concatenate(inputs), p["shortcut"]["conv"], spec.stride)
            shortcut, bn = _bn(shortcut, p["shortcut"]["bn"], s["shortcut"]["bn"], train)
            shortcuts = [shortcut[k * n : (k + 1) * n] for k in range(len(inputs))]
            module_stats["shortcut"] = {"bn": bn}
        else:
            shortcuts = inputs
        if mixing is None:
            r = sum(fs)
            if not per_branch_bn3:
                r, module_stats["bn3"] = _bn(r, p["bn3"], s["bn3"], train)
            x = jax.nn.relu(shortcuts[0] + r)
        else:
            outputs = [jax.nn.relu(a + b) for a, b in zip(shortcuts, fs, strict=True)]
        new_stats["modules"].append(module_stats)
    if mixing is not None:
        x = sum(outputs) / (C if aggregation == "mean" else 1)
    logits = x.mean(axis=(1, 2)) @ params["head"]["kernel"] + params["head"]["bias"]
    return logits, new_stats


def _loss(logits):
    weights = jnp.linspace(-1.0, 1.0, logits.size).reshape(logits.shape)
    return jnp.sum(jnp.sin(logits) * weights) + 0.1 * jnp.sum(logits**2)


def _variables(net):
    """float64 variables moved off their init (unit BN, zero head and zero statistics would
    let a wrong port of those tensors pass)."""
    variables = models.init(jax.random.key(0), net)
    rng = np.random.default_rng(0)

    def perturb(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['var']"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape))
        if name.endswith(("['scale']", "['bias']", "['mean']", "['kernel']")):
            offset = 1.0 if name.endswith("['scale']") else 0.0
            return jnp.asarray(offset + 0.3 * rng.normal(size=leaf.shape))
        if name == "['masks']":
            return jnp.asarray(rng.uniform(0.05, 1.0, leaf.shape))
        return jnp.asarray(leaf, jnp.float64)

    params = jax.tree_util.tree_map_with_path(perturb, variables["params"])
    stats = jax.tree_util.tree_map_with_path(perturb, variables["batch_stats"])
    return params, stats, variables["connectivity"]


def _assert_close(actual, expected, label):
    for (path, a), e in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True
    ):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == np.float64, f"{label}{jax.tree_util.keystr(path)} is {a.dtype}"
        scale = max(np.abs(e).max(), 1e-3)
        err = np.abs(a - e).max() / scale
        assert err < RTOL, f"{label}{jax.tree_util.keystr(path)}: {err:.2e}"


@functools.cache
def _mode_results(mode: str, train: bool):
    """``{formulation or "reference": ((loss, (logits, new_stats)), grads)}`` of one mode.

    One jit per mode: the first run costs as much as running op by op (the six networks'
    gradients share most operations' shapes), and the test session's persistent compilation
    cache serves every later run (15 s against 37 s for the five modes, one core)."""
    with jax.enable_x64(True):
        nets = {
            impl: models.Network(
                ARCH,
                num_classes=CLASSES,
                connectivity=mode,
                fan_in=K,
                branch_impl=impl,
                aggregation="mean",
                dtype=jnp.float64,
            )
            for impl in NAMED
        }
        params, stats, fixed = _variables(nets["loop"])
        if mode == "learned":
            binary = masks.sample(jax.random.key(1), params["masks"], K)
        elif mode == "random":
            binary = fixed.astype(jnp.float64)
        else:
            binary = None
        images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 3)))

        def library(net, params):
            conn = params["masks"] if mode == "real" else binary
            logits, new = models.apply(net, params, stats, images, connectivity=conn, train=train)
            return _loss(logits), (logits, new)

        def reference(params):
            if mode in ("learned", "real"):
                sg = jax.lax.stop_gradient
                real = params["masks"]
                used = real if mode == "real" else binary
                mixing = [sg(used[i]) + real[i] - sg(real[i]) for i in range(len(real))]
            elif mode == "random":
                mixing = list(binary)
            else:
                mixing = None
            logits, new = _reference(params, stats, images, mixing, train, "mean")
            return _loss(logits), (logits, new)

        def everything(params):
            grad = functools.partial(jax.value_and_grad, has_aux=True)
            out = {
                impl: grad(functools.partial(library, net))(params) for impl, net in nets.items()
            }
            out["reference"] = grad(reference)(params)
            return out

        return jax.device_get(jax.jit(everything)(params))


@pytest.mark.parametrize(
    ("mode", "train"),
    [("full", True), ("learned", True), ("random", True), ("real", True), ("learned", False)],
)
def test_every_formulation_matches_the_reference_in_float64(mode, train):
    """Logits, loss, new BN statistics and every gradient (train), or the eval forward."""
    results = _mode_results(mode, train)
    (ref_loss, (ref_logits, ref_stats)), ref_grads = results["reference"]
    assert np.isfinite(ref_loss)
    assert np.std(ref_logits) > 0.1  # a comparison that can fail
    for impl in NAMED:
        (loss, (logits, new_stats)), grads = results[impl]
        _assert_close(loss, ref_loss, f"{mode}/{impl} loss")
        _assert_close(logits, ref_logits, f"{mode}/{impl} logits")
        _assert_close(new_stats, ref_stats, f"{mode}/{impl} stats")
        if not train:
            continue
        _assert_close(grads, ref_grads, f"{mode}/{impl} grad ")
        if mode in ("learned", "real"):
            assert np.abs(grads["masks"]).min() > 0  # every entry gets its gradient


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("per_block", [False, True], ids=["shared_input", "per_block_inputs"])
def test_merged_runs_of_any_length_match_one_conv_per_branch(stride, per_block):
    """Runs of 2 and 3 branches over C = 5 (so a shorter run ends each), in both layouts,
    against the loop of C convolutions: forward and the gradients of input and kernels."""
    c, b, c_in = 5, 2, 3
    rng = np.random.default_rng(stride)
    with jax.enable_x64(True):
        spec = ModuleSpec(in_channels=c_in, bottleneck=b, out_channels=4, stride=stride,
                          cardinality=c)  # fmt: skip
        params, stats = blocks.init_module(jax.random.key(0), spec)
        params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
        stats = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape)), stats)
        shape = (c, 2, 6, 6, c_in) if per_block else (2, 6, 6, c_in)
        x = jnp.asarray(rng.normal(size=shape))

        def run(impl, params, x):
            y, _ = blocks.multi_branch_module(params, stats, x, stride=stride, train=True,
                                              impl=impl)  # fmt: skip
            return jnp.sum(jnp.sin(y))

        expected = jax.value_and_grad(functools.partial(run, "loop"), (0, 1))(params, x)
        for width in (2 * b, 3 * b):
            merged = blocks.Formulation("matmul", "merged", merge_widths=(width, width))
            assert blocks.merge_factor(c, b, stride, merged.merge_widths) == width // b
            got = jax.value_and_grad(functools.partial(run, merged), (0, 1))(params, x)
            _assert_close(got, expected, f"runs of {width // b}: ")


def test_auto_names_a_formulation_per_backend():
    assert blocks.resolve_branch_impl("auto", "cpu") in blocks.FORMULATIONS
    assert blocks.resolve_branch_impl("auto", "gpu") == "grouped"
    assert blocks.formulation("loop") == blocks.FORMULATIONS["loop"]
    with pytest.raises(ValueError, match="branch_impl"):
        blocks.resolve_branch_impl("fused")
    with pytest.raises(ValueError, match="spatial"):
        blocks.Formulation("matmul", "diagonal")
