"""Whole networks against hand-written references, across modes and branch formulations.

The references below are written from docs/design.md §1-2 with nothing but
``jax.lax.conv_general_dilated`` and ``jnp``: one convolution per block, batch norm
from its definition, block inputs ``x_j = sum_k m[j, k] y_k`` written as a sum.
Everything that compiles uses a two-module network of three branches on 8x8
images (see ``ARCH``), so that XLA:CPU compiles stay short; the paper's networks go
through ``jax.eval_shape`` only.
"""

import functools
import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import blocks, connectivity, layers, masks, models
from mcjax.architectures import PAPER_ARCHITECTURES, Architecture, ModuleSpec, get_architecture

C = 3
K = 2
NUM_CLASSES = 5
# Every concrete branch formulation, "loop" first.
IMPLS = sorted((i for i in blocks.BRANCH_IMPLS if i != "auto"), key=lambda i: i != "loop")


# Two modules of C = 3 blocks: module 1 keeps the shape (identity shortcut) and
# feeds every block the stem output; module 2 reads K = 2 of module 1's outputs per
# block and changes channels and resolution (one projection shared by its blocks).
ARCH = Architecture(
    name="tiny",
    stem="cifar",
    stem_channels=6,
    modules=(
        ModuleSpec(in_channels=6, bottleneck=2, out_channels=6, stride=1, cardinality=C),
        ModuleSpec(in_channels=6, bottleneck=3, out_channels=8, stride=2, cardinality=C),
    ),
)


def _one_module(stem):
    return Architecture(
        name=f"one-{stem}",
        stem=stem,
        stem_channels=4,
        modules=(ModuleSpec(in_channels=4, bottleneck=2, out_channels=6, stride=1, cardinality=C),),
    )


IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)


def _net(mode, impl="loop", arch=ARCH, **kwargs):
    kwargs.setdefault("aggregation", "sum")  # the reference's default, the paper's form
    return models.Network(
        arch, num_classes=NUM_CLASSES, connectivity=mode, fan_in=K, branch_impl=impl, **kwargs
    )


@functools.cache
def _jit_init(net):
    return jax.jit(lambda key: models.init(key, net))


@functools.cache
def _variables(net, seed=0):
    """Initial variables with every BN, head and mask value moved off its init.

    (The head is zero at init and BN is the identity: a comparison of logits at
    init could not fail.) The weights depend only on the seed, not on the mode.
    """
    variables = _jit_init(net)(jax.random.key(seed))

    def rng(path):  # one stream per leaf, whatever other leaves there are
        return np.random.default_rng([seed, zlib.crc32(jax.tree_util.keystr(path).encode())])

    def perturb_param(path, leaf):
        name, shape, rng_ = jax.tree_util.keystr(path), leaf.shape, rng(path)
        if name.endswith("['scale']"):
            return jnp.asarray(1.0 + 0.3 * rng_.normal(size=shape), jnp.float32)
        if name.endswith("['bias']"):
            return jnp.asarray(0.3 * rng_.normal(size=shape), jnp.float32)
        if name.endswith("['kernel']"):
            return jnp.asarray(rng_.normal(size=shape), jnp.float32)
        if name == "['masks']":
            return jnp.asarray(rng_.uniform(0.05, 1.0, size=shape), jnp.float32)
        return leaf

    def perturb_stats(path, leaf):
        if jax.tree_util.keystr(path).endswith("['mean']"):
            return jnp.asarray(0.2 * rng(path).normal(size=leaf.shape), jnp.float32)
        return jnp.asarray(rng(path).uniform(0.5, 1.5, size=leaf.shape), jnp.float32)

    params = jax.tree_util.tree_map_with_path(perturb_param, variables["params"])
    stats = jax.tree_util.tree_map_with_path(perturb_stats, variables["batch_stats"])
    return params, stats


def _loss(logits):
    weights = jnp.linspace(-1.0, 1.0, logits.size).reshape(logits.shape)
    return jnp.sum(jnp.sin(logits) * weights) + 0.1 * jnp.sum(logits**2)


def _policy_masks(net, params, *, key=None, fixed=None):
    """The masks of mcjax.connectivity: the fixed ones when given, else sampled."""
    return connectivity.step_masks(
        net, params, fixed, frozen=fixed is not None, train=True, key=key
    )


# --- The library, compiled once per (network, train) -------------------------------


@functools.cache
def _library_grad(net, train=True):
    """``(loss, (logits, new_stats)), grads`` of models.apply, masks from the policy."""

    def loss(params, stats, images, fixed):
        connectivity = _policy_masks(net, params, fixed=fixed)
        logits, new_stats = models.apply(
            net, params, stats, images, connectivity=connectivity, train=train
        )
        return _loss(logits), (logits, new_stats)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@functools.cache
def _library_forward(net, train):
    def forward(params, stats, images, fixed):
        connectivity = _policy_masks(net, params, fixed=fixed)
        return models.apply(net, params, stats, images, connectivity=connectivity, train=train)

    return jax.jit(forward)


# --- The reference ---------------------------------------------------------------


def _ref_conv(x, kernel, stride=1):
    pad = (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )


def _ref_bn(x, params, stats, train):
    if train:
        mean = x.mean(axis=(0, 1, 2))
        var = jnp.square(x - mean).mean(axis=(0, 1, 2))
        m = layers.BN_MOMENTUM
        new = {"mean": m * stats["mean"] + (1 - m) * mean, "var": m * stats["var"] + (1 - m) * var}
    else:
        mean, var, new = stats["mean"], stats["var"], stats
    y = (x - mean) / jnp.sqrt(var + layers.BN_EPSILON) * params["scale"] + params["bias"]
    return y, new


def _ref_max_pool(x):
    # 3x3 window, stride 2, padding 1 (padded cells never win).
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    windows = [
        padded[:, di : di + 2 * ho - 1 : 2, dj : dj + 2 * wo - 1 : 2, :]
        for di in range(3)
        for dj in range(3)
    ]
    return functools.reduce(jnp.maximum, windows)


def _ref_block(params, stats, j, x, stride, train, *, bn3=True):
    """F(x; theta_j) = BN3(conv3(relu(BN2(conv2(relu(BN1(conv1 x))))))); without BN3
    when ``bn3`` is False (ResNeXt's one BN comes after the sum of the branches)."""

    def take(tree):
        return jax.tree_util.tree_map(lambda a: a[j], tree)

    h = _ref_conv(x, params["conv1"][j])
    h, s1 = _ref_bn(h, take(params["bn1"]), take(stats["bn1"]), train)
    h = _ref_conv(jax.nn.relu(h), params["conv2"][j], stride)
    h, s2 = _ref_bn(h, take(params["bn2"]), take(stats["bn2"]), train)
    h = _ref_conv(jax.nn.relu(h), params["conv3"][j])
    if not bn3:
        return h, {"bn1": s1, "bn2": s2}
    h, s3 = _ref_bn(h, take(params["bn3"]), take(stats["bn3"]), train)
    return h, {"bn1": s1, "bn2": s2, "bn3": s3}


def _ref_module(params, stats, inputs, stride, train, *, bn3=True):
    """The C residual functions of per-block ``inputs`` and the shared shortcut of each."""
    outs, block_stats = zip(
        *[_ref_block(params, stats, j, x, stride, train, bn3=bn3) for j, x in enumerate(inputs)],
        strict=True,
    )
    new_stats = {
        name: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[s[name] for s in block_stats])
        for name in block_stats[0]
    }
    if "shortcut" in params:
        # One projection per module; with per-block inputs its BN statistics are
        # those of all the blocks' inputs together (mcjax.blocks.shortcut).
        n = inputs[0].shape[0]
        s = _ref_conv(jnp.concatenate(inputs), params["shortcut"]["conv"], stride)
        s, bn = _ref_bn(s, params["shortcut"]["bn"], stats["shortcut"]["bn"], train)
        shortcuts = [s[i * n : (i + 1) * n] for i in range(len(inputs))]
        new_stats["shortcut"] = {"bn": bn}
    else:
        shortcuts = list(inputs)
    return list(outs), shortcuts, new_stats


def _reference_apply(arch, params, stats, images, mixing, train, aggregation="sum"):
    """Logits and new BN statistics. ``mixing``: None (ResNeXt) or the L-1 [C, C] masks.

    ``aggregation="mean"`` divides each block input by K and averages the last
    module's outputs in the head instead of summing them.
    """
    stride = 2 if arch.stem == "imagenet" else 1
    x = _ref_conv(images, params["stem"]["conv"], stride)
    x, stem_bn = _ref_bn(x, params["stem"]["bn"], stats["stem"]["bn"], train)
    x = jax.nn.relu(x)
    if arch.stem in ("cifar_maxpool", "imagenet"):
        x = _ref_max_pool(x)
    new_stats = {"stem": {"bn": stem_bn}, "modules": []}
    outputs = None
    for i, (spec, p, s) in enumerate(
        zip(arch.modules, params["modules"], stats["modules"], strict=True)
    ):
        c = spec.cardinality
        if mixing is None and p["bn3"]["scale"].ndim == 1:
            # ResNeXt: y = relu(S(x) + BN3(sum_j conv3_j(h_j))), one stream.
            fs, ss, ns = _ref_module(p, s, [x] * c, spec.stride, train, bn3=False)
            r, ns["bn3"] = _ref_bn(sum(fs), p["bn3"], s["bn3"], train)
            x = jax.nn.relu(ss[0] + r)
        elif mixing is None:
            # The per-branch-BN ablation: y = relu(S(x) + sum_j F_j(x)), one stream.
            fs, ss, ns = _ref_module(p, s, [x] * c, spec.stride, train)
            x = jax.nn.relu(ss[0] + sum(fs))
        else:
            if i == 0:
                inputs = [x] * c
            else:
                m = mixing[i - 1]
                inputs = [sum(m[j, k] * outputs[k] for k in range(len(outputs))) for j in range(c)]
                if aggregation == "mean":
                    inputs = [x_j / K for x_j in inputs]
            fs, ss, ns = _ref_module(p, s, inputs, spec.stride, train)
            outputs = [jax.nn.relu(a + b) for a, b in zip(ss, fs, strict=True)]
        new_stats["modules"].append(ns)
    if mixing is None:
        features = x
    else:
        features = sum(outputs) / (len(outputs) if aggregation == "mean" else 1)
    logits = features.mean(axis=(1, 2)) @ params["head"]["kernel"] + params["head"]["bias"]
    return logits, new_stats


@functools.cache
def _reference_grad(arch, masked, train=True):
    """Like :func:`_library_grad`; masks enter as ``binary + real - stop_gradient(real)``."""

    def loss(params, stats, images, binary):
        mixing = None
        if masked:
            real = params["masks"]
            sg = jax.lax.stop_gradient
            mixing = [sg(binary[i]) + real[i] - sg(real[i]) for i in range(len(real))]
        logits, new_stats = _reference_apply(arch, params, stats, images, mixing, train)
        return _loss(logits), (logits, new_stats)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def _binary(params, seed=0):
    return masks.sample(jax.random.key(seed), params["masks"], K)


def _global_norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree_util.tree_leaves(tree))))


def _assert_close(actual, expected, rtol, label=""):
    """The difference in every leaf is within ``rtol`` of the global norm of ``expected``."""
    chex.assert_trees_all_equal_structs(actual, expected)
    bound = rtol * _global_norm(expected)
    assert bound > 0
    for (path, a), e in zip(
        jax.tree_util.tree_leaves_with_path(actual),
        jax.tree_util.tree_leaves(expected),
        strict=True,
    ):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        err = float(np.linalg.norm((a - e).ravel()))
        assert err <= bound, f"{label}{jax.tree_util.keystr(path)}: |diff| {err:.3g} > {bound:.3g}"


# --- Against the references -------------------------------------------------------


@pytest.mark.parametrize("per_branch_bn", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_full_is_the_resnext_module(train, per_branch_bn):
    net = _net("full", full_per_branch_bn=per_branch_bn)
    params, stats = _variables(net)
    if train:
        (_, (logits, new_stats)), _ = _library_grad(net)(params, stats, IMAGES, None)
    else:
        logits, new_stats = _library_forward(net, False)(params, stats, IMAGES, None)
    ref_logits, ref_stats = jax.jit(_reference_apply, static_argnums=(0, 4, 5))(
        ARCH, params, stats, IMAGES, None, train
    )
    chex.assert_shape(logits, (2, NUM_CLASSES))
    assert float(jnp.std(ref_logits)) > 0.1  # a comparison that can fail
    chex.assert_trees_all_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(new_stats, ref_stats, rtol=1e-5, atol=1e-6)
    if not train:
        chex.assert_trees_all_equal(new_stats, stats)


@pytest.mark.parametrize("stem", ["cifar_maxpool", "imagenet"])
def test_full_with_pooling_stems(stem):
    arch = _one_module(stem)
    net = _net("full", arch=arch)
    params, stats = _variables(net)
    images = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 3)), jnp.float32)
    logits, _ = _library_forward(net, False)(params, stats, images, None)
    ref_logits, _ = jax.jit(_reference_apply, static_argnums=(0, 4, 5))(
        arch, params, stats, images, None, False
    )
    chex.assert_trees_all_close(logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_learned_matches_the_reference_with_straight_through_gradients():
    net = _net("learned")
    params, stats = _variables(net)
    binary = _binary(params)
    assert 0 < float(binary.mean()) < 1
    (loss, (logits, new_stats)), grads = _library_grad(net)(params, stats, IMAGES, binary)
    (ref_loss, (ref_logits, ref_stats)), ref_grads = _reference_grad(ARCH, True)(
        params, stats, IMAGES, binary
    )
    assert float(jnp.std(ref_logits)) > 0.1
    chex.assert_trees_all_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(loss, ref_loss, rtol=1e-5)
    chex.assert_trees_all_close(new_stats, ref_stats, rtol=1e-5, atol=1e-6)
    chex.assert_tree_all_finite(grads)
    _assert_close(grads, ref_grads, 1e-5)
    chex.assert_trees_all_close(grads["masks"], ref_grads["masks"], rtol=1e-4, atol=1e-5)
    # Straight-through: the unused (binary 0) entries get a gradient too.
    unused = np.asarray(binary) == 0
    assert np.all(np.abs(np.asarray(grads["masks"])[unused]) > 0)
    # The real-valued masks do not change the forward pass, only the gradient.
    params_other = dict(params, masks=1.05 - params["masks"])
    (_, (logits_other, _)), _ = _library_grad(net)(params_other, stats, IMAGES, binary)
    chex.assert_trees_all_close(logits_other, logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_learned_eval_matches_the_reference(aggregation):
    net = _net("learned", aggregation=aggregation)
    params, stats = _variables(net)
    binary = _binary(params, seed=1)
    logits, new_stats = _library_forward(net, False)(params, stats, IMAGES, binary)
    ref_logits, _ = jax.jit(_reference_apply, static_argnums=(0, 5, 6))(
        ARCH, params, stats, IMAGES, list(binary), False, aggregation
    )
    assert float(jnp.std(ref_logits)) > 0.1
    chex.assert_trees_all_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal(new_stats, stats)


def test_real_mode_gradient_is_exact():
    net = _net("real")
    params, stats = _variables(net)
    # The real-valued masks themselves, in forward and backward.
    assert _policy_masks(net, params) is params["masks"]
    (_, (logits, _)), grads = _library_grad(net)(params, stats, IMAGES, None)
    (_, (ref_logits, _)), ref_grads = _reference_grad(ARCH, True)(
        params, stats, IMAGES, params["masks"]
    )
    chex.assert_trees_all_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    _assert_close(grads, ref_grads, 1e-5)
    chex.assert_trees_all_close(grads["masks"], ref_grads["masks"], rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(grads["masks"]).min()) > 0


# --- Branch formulations --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["learned", "full", "full_per_branch_bn"])
def test_branch_formulations_agree(mode):
    kwargs = {"full_per_branch_bn": True} if mode == "full_per_branch_bn" else {}
    mode = mode.removesuffix("_per_branch_bn")
    params, stats = _variables(_net(mode, **kwargs))
    binary = _binary(params) if mode == "learned" else None
    results = {}
    for impl in IMPLS:
        net = _net(mode, impl, **kwargs)
        (_, (logits, new_stats)), grads = _library_grad(net)(params, stats, IMAGES, binary)
        results[impl] = (logits, new_stats, grads)
    logits, new_stats, grads = results["loop"]
    for impl in IMPLS[1:]:
        other_logits, other_stats, other_grads = results[impl]
        chex.assert_trees_all_close(other_logits, logits, rtol=1e-5, atol=1e-5)
        chex.assert_trees_all_close(other_stats, new_stats, rtol=1e-5, atol=1e-6)
        _assert_close(other_grads, grads, 1e-5, label=f"{impl}: ")


# --- Modes ------------------------------------------------------------------------


def _param_count(net):
    variables = jax.eval_shape(lambda key: models.init(key, net), jax.random.key(0))
    params = {k: v for k, v in variables["params"].items() if k != "masks"}
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)), variables


@pytest.mark.parametrize("arch", [ARCH, get_architecture("20,4,8")], ids=["tiny", "20,4,8"])
def test_masked_modes_and_per_branch_bn_full_have_the_same_parameters(arch):
    counts = {}
    for mode in models.CONNECTIVITIES:
        net = _net(mode, arch=arch, full_per_branch_bn=True)
        counts[mode], variables = _param_count(net)
        assert ("masks" in variables["params"]) == (mode in ("learned", "real"))
        if "masks" in variables["params"]:
            chex.assert_shape(
                variables["params"]["masks"], (arch.num_modules - 1, *arch.mask_shapes[0])
            )
    assert len(set(counts.values())) == 1, counts
    # ResNeXt's form: one BN (scale and bias) over c_out per module instead of C.
    fewer = sum(2 * m.out_channels * (m.cardinality - 1) for m in arch.modules)
    resnext, variables = _param_count(_net("full", arch=arch))
    assert resnext == counts["learned"] - fewer
    for module, spec in zip(variables["params"]["modules"], arch.modules, strict=True):
        assert module["bn3"]["scale"].shape == (spec.out_channels,)
        assert module["conv3"].shape == (spec.cardinality, 1, 1, spec.bottleneck, spec.out_channels)


def test_modes_share_weights_for_the_same_key():
    weights = {}
    for mode in models.CONNECTIVITIES:
        params = _jit_init(_net(mode))(jax.random.key(0))["params"]
        weights[mode] = {k: v for k, v in params.items() if k != "masks"}
    weights["full_per_branch_bn"] = _jit_init(_net("full", full_per_branch_bn=True))(
        jax.random.key(0)
    )["params"]
    for mode in ("random", "real", "full_per_branch_bn"):
        chex.assert_trees_all_equal(weights[mode], weights["learned"])

    def without_bn3(params):
        return dict(
            params, modules=[{k: v for k, v in m.items() if k != "bn3"} for m in params["modules"]]
        )

    chex.assert_trees_all_equal(without_bn3(weights["full"]), without_bn3(weights["learned"]))


def test_per_branch_bn_full_with_split_statistics_is_resnext_in_eval():
    """One BN after the sum equals per-branch BNs whose scale and variance are the one
    BN's and whose bias and mean are the one BN's divided by C (docs/design.md §2)."""
    net = _net("full")
    params, stats = _variables(net)
    split_params = dict(params, modules=[])
    split_stats = dict(stats, modules=[])
    for p, s in zip(params["modules"], stats["modules"], strict=True):
        c = p["conv1"].shape[0]

        def per_branch(v, divide, c=c):
            return jnp.broadcast_to(v / (c if divide else 1), (c, v.shape[0]))

        bn3 = {
            "scale": per_branch(p["bn3"]["scale"], False),
            "bias": per_branch(p["bn3"]["bias"], True),
        }
        bn3_stats = {
            "mean": per_branch(s["bn3"]["mean"], True),
            "var": per_branch(s["bn3"]["var"], False),
        }
        split_params["modules"].append(dict(p, bn3=bn3))
        split_stats["modules"].append(dict(s, bn3=bn3_stats))
    logits, _ = _library_forward(net, False)(params, stats, IMAGES, None)
    split_logits, _ = _library_forward(_net("full", full_per_branch_bn=True), False)(
        split_params, split_stats, IMAGES, None
    )
    assert float(jnp.std(logits)) > 0.1
    chex.assert_trees_all_close(split_logits, logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="full_per_branch_bn"):
        _library_forward(net, False)(split_params, split_stats, IMAGES, None)


def test_learned_with_k_equal_c_samples_all_ones():
    net = models.Network(ARCH, num_classes=NUM_CLASSES, connectivity="learned", fan_in=C)
    params, _ = _variables(_net("learned"))
    params = dict(params, masks=params["masks"].at[0, 0, 1].set(0.0))
    for seed in range(3):
        binary = _policy_masks(net, params, key=jax.random.key(seed))
        chex.assert_shape(binary, (ARCH.num_modules - 1, C, C))
        np.testing.assert_array_equal(binary, 1.0)


def test_learned_samples_with_the_key_or_uses_fixed_masks():
    net = _net("learned")
    params, _ = _variables(net)
    a = _policy_masks(net, params, key=jax.random.key(0))
    b = _policy_masks(net, params, key=jax.random.key(0))
    chex.assert_trees_all_equal(a, b)
    np.testing.assert_array_equal(np.asarray(a).sum(-1), K)
    fixed = masks.top_k(params["masks"], K)
    assert _policy_masks(net, params, key=jax.random.key(0), fixed=fixed) is fixed
    assert _policy_masks(_net("full"), params) is None


def test_random_mode_connectivity_is_k_hot_and_seeded():
    net = models.Network(
        get_architecture("20,4,8"), num_classes=NUM_CLASSES, connectivity="random", fan_in=4
    )

    @jax.jit
    def connectivity(key):
        return models.init(key, net)["connectivity"]

    a, b, c = (np.asarray(connectivity(jax.random.key(seed))) for seed in (0, 0, 1))
    assert a.shape == (5, 8, 8)
    assert set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a.sum(-1), 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Not the same row everywhere.
    assert len({tuple(row) for row in a.reshape(-1, 8)}) > 1
    # The other modes have no fixed connectivity.
    assert _jit_init(_net("learned"))(jax.random.key(0))["connectivity"] is None


def test_random_mode_runs_with_its_fixed_connectivity():
    net = _net("random")
    variables = _jit_init(net)(jax.random.key(0))
    with pytest.raises(ValueError, match="fixed"):
        _policy_masks(net, variables["params"])
    fixed = variables["connectivity"]
    assert _policy_masks(net, variables["params"], fixed=fixed) is fixed
    # Same function as learned with those masks (the same weights, masks aside).
    params, stats = _variables(net)
    logits, _ = _library_forward(net, False)(params, stats, IMAGES, fixed)
    learned_params, _ = _variables(_net("learned"))
    ref_logits, _ = _library_forward(_net("learned"), False)(learned_params, stats, IMAGES, fixed)
    chex.assert_trees_all_close(logits, ref_logits, rtol=1e-6, atol=1e-6)


# --- Shapes of the paper's networks ------------------------------------------------


@pytest.mark.parametrize("mode", models.CONNECTIVITIES)
@pytest.mark.parametrize("name", PAPER_ARCHITECTURES)
def test_logits_shape_of_paper_networks(name, mode):
    arch = get_architecture(name)
    imagenet = name.startswith("resnext")
    # Grouped branches trace fastest for C = 32, 64; the shapes are the same.
    net = models.Network(
        arch,
        num_classes=1000 if imagenet else 100,
        connectivity=mode,
        fan_in=arch.cardinality // 2,
        branch_impl="grouped" if imagenet else "auto",
    )
    size = 64 if imagenet else 32

    def run(key):
        variables = models.init(key, net)
        connectivity = _policy_masks(
            net, variables["params"], key=key, fixed=variables["connectivity"]
        )
        images = jnp.zeros((2, size, size, 3))
        return models.apply(
            net,
            variables["params"],
            variables["batch_stats"],
            images,
            connectivity=connectivity,
            train=True,
        )

    logits, new_stats = jax.eval_shape(run, jax.random.key(0))
    chex.assert_shape(logits, (2, net.num_classes))
    chex.assert_type(logits, jnp.float32)
    variables = jax.eval_shape(lambda key: models.init(key, net), jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(new_stats, variables["batch_stats"])


def test_maxpool_stem_and_bfloat16_shapes():
    arch = get_architecture("20,4,8", stem="cifar_maxpool")
    net = models.Network(arch, num_classes=100, dtype=jnp.bfloat16)

    def run(key):
        variables = models.init(key, net)
        connectivity = _policy_masks(net, variables["params"], key=key)
        images = jnp.zeros((2, 64, 64, 3))
        return models.apply(
            net,
            variables["params"],
            variables["batch_stats"],
            images,
            connectivity=connectivity,
            train=False,
        )[0]

    logits = jax.eval_shape(run, jax.random.key(0))
    chex.assert_shape(logits, (2, 100))
    chex.assert_type(logits, jnp.float32)


# --- Errors -------------------------------------------------------------------------


def _abstract(net):
    return jax.eval_shape(lambda key: models.init(key, net), jax.random.key(0))


def _apply_abstract(net, variables, images, connectivity):
    return jax.eval_shape(
        lambda p, s, x, c: models.apply(net, p, s, x, connectivity=c, train=True),
        variables["params"],
        variables["batch_stats"],
        images,
        connectivity,
    )


def test_apply_rejects_bad_images():
    net = _net("full")
    variables = _abstract(net)
    for shape in [(2, 8, 8, 1), (2, 8, 8, 4), (8, 8, 3)]:
        with pytest.raises(ValueError, match="images"):
            _apply_abstract(net, variables, jax.ShapeDtypeStruct(shape, jnp.float32), None)


def test_apply_rejects_connectivity_of_the_wrong_mode_or_shape():
    images = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    full = _net("full")
    learned = _net("learned")
    good = jax.ShapeDtypeStruct((ARCH.num_modules - 1, C, C), jnp.float32)
    with pytest.raises(ValueError, match="connectivity"):
        _apply_abstract(full, _abstract(full), images, good)
    for mode in ("learned", "random", "real"):
        net = _net(mode)
        with pytest.raises(ValueError, match="connectivity"):
            _apply_abstract(net, _abstract(net), images, None)
    with pytest.raises(ValueError, match="modules"):
        bad = jax.ShapeDtypeStruct((ARCH.num_modules, C, C), jnp.float32)
        _apply_abstract(learned, _abstract(learned), images, bad)
    with pytest.raises(ValueError, match="shape"):
        bad = jax.ShapeDtypeStruct((ARCH.num_modules - 1, C, C + 1), jnp.float32)
        _apply_abstract(learned, _abstract(learned), images, bad)
    with pytest.raises(ValueError, match="key"):
        _policy_masks(learned, _abstract(learned)["params"])


@pytest.mark.parametrize("mode", ["learned", "random", "real"])
@pytest.mark.parametrize("fan_in", [0, -1, C + 1])
def test_network_rejects_fan_in_outside_1_to_c(mode, fan_in):
    with pytest.raises(ValueError, match="fan_in"):
        models.Network(ARCH, num_classes=NUM_CLASSES, connectivity=mode, fan_in=fan_in)


def test_network_rejects_bad_settings():
    # Full connectivity has no masks: the fan-in is not used.
    models.Network(ARCH, num_classes=NUM_CLASSES, connectivity="full", fan_in=C + 1)
    for kwargs, match in [
        ({"connectivity": "dense"}, "connectivity"),
        ({"aggregation": "max"}, "aggregation"),
        ({"branch_impl": "fused"}, "branch_impl"),
        ({"mask_init": 1.5}, "mask_init"),
        ({"num_classes": 0}, "num_classes"),
    ]:
        settings = {"num_classes": NUM_CLASSES, "fan_in": K, **kwargs}
        with pytest.raises(ValueError, match=match):
            models.Network(ARCH, **settings)


def test_zero_init_residual_makes_every_block_its_shortcut():
    arch = get_architecture("11,2,4")
    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    for zero in (True, False):
        net = models.Network(arch, num_classes=3, fan_in=2, zero_init_residual=zero)
        variables = models.init(jax.random.key(0), net)
        scales = [m["bn3"]["scale"] for m in variables["params"]["modules"]]
        assert all(bool((s == 0).all()) == zero for s in scales)
        params, stats = variables["params"], variables["batch_stats"]
        spec = arch.modules[0]
        x, _ = models._stem(net, params["stem"], stats["stem"], images, train=True, axis_name=None)
        y, _ = blocks.multi_branch_module(
            params["modules"][0], stats["modules"][0], x, stride=spec.stride, train=True
        )
        shortcut, _ = blocks.shortcut(
            params["modules"][0], stats["modules"][0], x, stride=spec.stride, train=True
        )
        same = bool(jnp.allclose(y, jax.nn.relu(shortcut)[None].repeat(4, 0)))
        assert same == zero
        # ResNeXt's form: the one BN after the sum starts at 0, the module as its shortcut.
        full = models.Network(arch, num_classes=3, connectivity="full", zero_init_residual=zero)
        variables = models.init(jax.random.key(0), full)
        y, _ = blocks.resnext_module(
            variables["params"]["modules"][0],
            variables["batch_stats"]["modules"][0],
            x,
            stride=spec.stride,
            train=True,
        )
        assert bool(jnp.allclose(y, jax.nn.relu(shortcut))) == zero
