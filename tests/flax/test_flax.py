"""mcjax.nnx and mcjax.linen: the same network as the functional core, Flax's optimizer wrappers."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import mcjax
from mcjax import architectures, connectivity, masks, models
from mcjax import linen as mlinen
from mcjax import nnx as mnnx

ARCH = "11,2,4"  # three modules of C = 4 blocks
K = 2
NUM_CLASSES = 5
IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 3)), jnp.float32)
LABELS = jnp.array([0, 3, 1])


def _rel(a, b) -> float:
    """Max error relative to the norm of the whole tensor (not of one element)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.linalg.norm(b), 1e-30))


def _net(mode):
    return models.Network(
        architectures.get_architecture(ARCH),
        num_classes=NUM_CLASSES,
        connectivity=mode,
        fan_in=K,
        branch_impl="loop",
    )


@functools.cache
def _variables(mode):
    """Initial variables with every weight, BN statistic, head and mask moved off its init."""
    net = _net(mode)

    @jax.jit
    def make(key):
        k_init, k_params, k_masks, k_stats = jax.random.split(key, 4)
        variables = models.init(k_init, net)
        leaves, treedef = jax.tree.flatten(variables["params"])
        keys = jax.random.split(k_params, len(leaves))
        params = jax.tree.unflatten(
            treedef,
            [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)],
        )
        if net.has_masks:
            params["masks"] = jax.random.uniform(k_masks, net.masks_shape)
        stats = jax.tree.map(
            lambda x: x + 0.2 * jax.random.uniform(k_stats, x.shape), variables["batch_stats"]
        )
        return {"params": params, "batch_stats": stats, "connectivity": variables["connectivity"]}

    return make(jax.random.key(0))


def _loss(logits):
    return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()


@functools.cache
def _three_ways(mode, train):
    """Logits, batch statistics and mask gradients of the functional core, NNX and Linen.

    One jitted program per case (compiling is what costs on a small CPU). Each Flax
    result is paired with the functional one on the connectivity that Flax used: NNX
    is given a raw key (the core's own draw), Linen reports its draw (``intermediates``).
    """
    net, variables = _net(mode), _variables(mode)
    module = mlinen.Network.from_functional(net)
    model = mnnx.Network.from_variables(net, variables)
    model.train() if train else model.eval()
    graphdef, state = nnx.split(model)

    def functional(connectivity):
        def loss(params):
            logits, stats = models.apply(
                net,
                params,
                variables["batch_stats"],
                IMAGES,
                connectivity=connectivity,
                train=train,
            )
            return _loss(logits), (logits, stats)

        (_, (logits, stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return {"logits": logits, "stats": stats, "masks_grad": grads.get("masks")}

    @jax.jit
    def run(state, key):
        model = nnx.merge(graphdef, state)

        def nnx_loss(model):
            logits = model(IMAGES, rngs=key)  # a raw key: the core's draw with that key
            return _loss(logits), logits

        grads, logits = nnx.grad(nnx_loss, has_aux=True)(model)
        nnx_result = {
            "logits": logits,
            "stats": model.to_variables()["batch_stats"],
            "masks_grad": grads["masks"][...] if net.has_masks else None,
        }
        fixed = variables["connectivity"]
        if mode == "learned" and not train:
            fixed = masks.top_k(variables["params"]["masks"], K)
        nnx_used = connectivity.step_masks(
            net, variables["params"], fixed, frozen=False, train=train, key=key
        )

        linen_vars = mlinen.linen_variables(variables)

        def linen_loss(params):
            logits, updates = module.apply(
                {**linen_vars, "params": params},
                IMAGES,
                train=train,
                rngs={"masks": jax.random.fold_in(key, 1)},
                mutable=["batch_stats", "intermediates"],
            )
            return _loss(logits), (logits, updates)

        (_, (logits, updates)), grads = jax.value_and_grad(linen_loss, has_aux=True)(
            linen_vars["params"]
        )
        (linen_used,) = updates["intermediates"]["connectivity"]
        linen_result = {
            "logits": logits,
            "stats": updates["batch_stats"],
            "masks_grad": grads.get("masks"),
        }
        return {
            "nnx": (nnx_result, functional(nnx_used)),
            "linen": (linen_result, functional(linen_used)),
            "linen_used": linen_used,
        }

    return run(state, jax.random.key(11))


def _mode_and_train():
    """Every mode in eval and train. Slow: the train variants of random and real (fixed
    K-hot and real masks through the code paths of learned's train variant) and real's
    eval (random's eval runs the same path with K-hot masks). The NNX and Linen tests of
    one mode share its compiled program (:func:`_three_ways`): one xdist worker runs both."""
    for mode in models.CONNECTIVITIES:
        for train in (True, False):
            slow = mode == "real" or (train and mode == "random")
            marks = [_same_worker(mode)] + ([pytest.mark.slow] if slow else [])
            yield pytest.param(
                mode, train, marks=marks, id=f"{mode}-{'train' if train else 'eval'}"
            )


def _same_worker(mode):
    """The tests of one mode's variables and programs run on one xdist worker."""
    return pytest.mark.xdist_group(f"flax-{mode}")


@pytest.mark.parametrize("mode, train", list(_mode_and_train()))
@pytest.mark.parametrize("flavour", ["nnx", "linen"])
def test_flax_equals_functional(flavour, mode, train):
    got, expected = _three_ways(mode, train)[flavour]
    assert _rel(got["logits"], expected["logits"]) < 1e-5
    assert float(jnp.abs(expected["logits"]).max()) > 0  # weights moved off the zero head
    if train:
        rel = jax.tree.map(_rel, got["stats"], expected["stats"])
        assert max(jax.tree.leaves(rel)) < 1e-5
    if expected["masks_grad"] is not None:
        assert _rel(got["masks_grad"], expected["masks_grad"]) < 1e-5
        assert float(jnp.abs(expected["masks_grad"]).max()) > 0
    if mode == "learned":
        used = _three_ways(mode, train)["linen_used"]
        np.testing.assert_array_equal(np.asarray(used).sum(-1), K)  # K-hot
        if not train:
            top = masks.top_k(_variables(mode)["params"]["masks"], K)
            np.testing.assert_array_equal(used, top)


@_same_worker("learned")
def test_conversions_round_trip():
    for mode in models.CONNECTIVITIES:
        variables = _variables(mode)
        back = mnnx.Network.from_variables(_net(mode), variables).to_variables()
        chex.assert_trees_all_equal(back, variables)
        linen_back = mlinen.functional_variables(mlinen.linen_variables(variables))
        chex.assert_trees_all_equal(linen_back, variables)


def test_nnx_and_linen_own_initialisation_is_the_functional_layout(jit_init):
    model = mnnx.Network(ARCH, num_classes=NUM_CLASSES, fan_in=K, rngs=nnx.Rngs(0))
    reference = jit_init(jax.random.key(0), _net("learned"))
    chex.assert_trees_all_equal_shapes(model.to_variables(), reference)
    module = mlinen.Network(ARCH, num_classes=NUM_CLASSES, fan_in=K)
    variables = module.init(jax.random.key(0), IMAGES, train=False)
    chex.assert_trees_all_equal_shapes(
        mlinen.functional_variables(variables)["params"], reference["params"]
    )
    # The masks are what maskconnect trains: NNX's Mask type, Linen's param "masks".
    assert isinstance(model.masks, mnnx.Mask)
    labels = mcjax.optim.param_labels(variables["params"])
    assert labels["masks"] == "masks" and labels["head"]["kernel"] == "weights"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.slow) if name.startswith("resnext101") else name
        for name in architectures.PAPER_ARCHITECTURES
    ],
)
def test_every_architecture_builds(name):
    # Shapes only (no arrays), so the ImageNet networks cost a trace each.
    arch = architectures.get_architecture(name)
    k = arch.cardinality // 2
    abstract = nnx.eval_shape(
        lambda: mnnx.Network(name, num_classes=10, fan_in=k, rngs=nnx.Rngs(0))
    )
    assert abstract.masks.shape == (arch.num_modules - 1, arch.cardinality, arch.cardinality)
    module = mlinen.Network(name, num_classes=10, fan_in=k, branch_impl="grouped")
    size = 64 if name.startswith("resnext") else 32
    shapes = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )
    assert shapes["params"]["masks"].shape == abstract.masks.shape


@_same_worker("learned")
def test_nnx_modes_freeze_and_prune(jit_apply):
    model = mnnx.Network.from_variables(_net("learned"), _variables("learned"))
    forward = nnx.jit(lambda model, key: model(IMAGES, rngs=key))
    model.train()
    a, b = forward(model, jax.random.key(0)), forward(model, jax.random.key(1))
    assert not np.allclose(a, b)  # sampled connectivity
    model.freeze()
    a, b = forward(model, jax.random.key(0)), forward(model, jax.random.key(1))
    np.testing.assert_array_equal(a, b)  # top-K in training once frozen
    model.eval()
    pruned = model.prune()
    logits, _ = jit_apply(
        pruned.net,
        pruned.params,
        pruned.batch_stats,
        IMAGES,
        connectivity=pruned.connectivity,
        train=False,
    )
    assert _rel(logits, forward(model, jax.random.key(0))) < 1e-5
    linen_module = mlinen.Network.from_functional(_net("learned"))
    linen_pruned = mlinen.prune(linen_module, mlinen.linen_variables(_variables("learned")))
    chex.assert_trees_all_equal(linen_pruned.params, pruned.params)


def test_learned_masks_need_a_masks_stream_in_training():
    layer = mnnx.MaskedAggregation(3, 4, fan_in=2, rngs=None)
    x = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="masks"):
        layer(x)
    layer.eval()
    layer(x)  # top-K needs no key
    np.testing.assert_array_equal(np.asarray(layer(x, rngs=jax.random.key(0)) != 0).sum(), 6)


# --- Flax's optimizer wrappers ---------------------------------------------------------


def _tx():
    return mcjax.maskconnect(weight_learning_rate=0.05, mask_learning_rate=0.5)


@_same_worker("learned")
def test_nnx_optimizer_three_steps():
    model = mnnx.Network.from_variables(_net("learned"), _variables("learned"))
    optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
    start = model.masks[...]

    @nnx.jit
    def step(model, optimizer, key):
        def loss_fn(model):
            return _loss(model(IMAGES, rngs=key))

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for i in range(3):
        assert np.isfinite(float(step(model, optimizer, jax.random.key(i))))
    moved = model.masks[...]
    assert not np.allclose(moved, start)
    assert float(moved.min()) >= 0.0 and float(moved.max()) <= 1.0


@_same_worker("learned")
def test_train_state_three_steps():
    module = mlinen.Network.from_functional(_net("learned"))
    variables = mlinen.linen_variables(_variables("learned"))
    state = train_state.TrainState.create(
        apply_fn=module.apply, params=nn.FrozenDict(variables["params"]), tx=_tx()
    )
    batch_stats = variables["batch_stats"]

    @jax.jit
    def step(state, batch_stats, key):
        def loss_fn(params):
            logits, updates = state.apply_fn(
                {"params": params, "batch_stats": batch_stats},
                IMAGES,
                train=True,
                rngs={"masks": key},
                mutable=["batch_stats"],
            )
            return _loss(logits), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), batch_stats, loss

    start = variables["params"]["masks"]
    for i in range(3):
        state, batch_stats, loss = step(state, batch_stats, jax.random.key(i))
        assert np.isfinite(float(loss))
    moved = state.params["masks"]
    assert not np.allclose(moved, start)
    assert float(moved.min()) >= 0.0 and float(moved.max()) <= 1.0


# --- The generic container learns which branch carries the signal ----------------------

C_TOY, SIGNAL = 4, 2


def _toy_batch(key, n=64):
    """C_TOY input branches of 8 features; only branch SIGNAL predicts the label."""
    k_x, k_y = jax.random.split(key)
    labels = jax.random.bernoulli(k_y, 0.5, (n,)).astype(jnp.int32)
    x = jax.random.normal(k_x, (C_TOY, n, 8))
    x = x.at[SIGNAL, :, 0].add(3.0 * (2.0 * labels - 1.0))
    return x, labels


class _MLPBlock(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.dense(x))


def _toy_head_input(y):
    return y.mean(axis=0)  # [N, 8], the mean over the C branches


def test_nnx_multi_branch_picks_the_signal_branch():
    rngs = nnx.Rngs(0)
    branches = mnnx.MultiBranch(_MLPBlock, 2, num_inputs=C_TOY, fan_in=1, mask_init=0.5, rngs=rngs)
    head = nnx.Linear(8, 2, rngs=rngs)
    model = nnx.List([branches, head])
    optimizer = nnx.Optimizer(
        model, mcjax.maskconnect(weight_learning_rate=0.05, mask_learning_rate=0.05), wrt=nnx.Param
    )

    @nnx.jit
    def step(model, optimizer, x, labels):
        def loss_fn(model):
            logits = model[1](_toy_head_input(model[0](x)))
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for i in range(150):
        step(model, optimizer, *_toy_batch(jax.random.key(i)))
    top = np.asarray(masks.top_k(branches.mix.masks[...], 1))
    np.testing.assert_array_equal(top.argmax(-1), [SIGNAL, SIGNAL])


class _ConvBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jax.nn.relu(nn.Conv(4, (3,), padding="SAME")(x))


def test_linen_multi_branch_of_conv_blocks_picks_the_signal_branch():
    # Branches of 1-D conv blocks on sequences [N, 8, 1]; the label is in one branch.
    module = mlinen.MultiBranch(_ConvBlock(), 2, fan_in=1)
    head = nn.Dense(2)
    x0, _ = _toy_batch(jax.random.key(0))
    variables = module.init(jax.random.key(0), x0[..., None], train=False)
    head_params = head.init(jax.random.key(1), jnp.zeros((1, 32)))
    params = {"body": variables["params"], "head": head_params["params"]}
    tx = mcjax.maskconnect(weight_learning_rate=0.05, mask_learning_rate=0.05)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, labels, key):
        def loss_fn(params):
            y = module.apply(
                {"params": params["body"]}, x[..., None], train=True, rngs={"masks": key}
            )
            logits = head.apply({"params": params["head"]}, y.mean(axis=0).reshape(x.shape[1], -1))
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for i in range(150):
        x, labels = _toy_batch(jax.random.key(i))
        params, opt_state = step(params, opt_state, x, labels, jax.random.key(1000 + i))
    top = np.asarray(masks.top_k(params["body"]["mix"]["masks"], 1))
    np.testing.assert_array_equal(top.argmax(-1), [SIGNAL, SIGNAL])


def test_masked_aggregation_modes():
    x = jax.random.normal(jax.random.key(0), (4, 2, 3))
    full = mnnx.MaskedAggregation(3, 4, fan_in=2, connectivity="full", rngs=nnx.Rngs(0))
    chex.assert_trees_all_close(full(x), jnp.broadcast_to(x.mean(0), (3, 2, 3)), rtol=1e-6)
    layer = mnnx.MaskedAggregation(3, 4, fan_in=2, aggregation="sum", rngs=nnx.Rngs(0))
    layer.masks[...] = jnp.array([[0.9, 0.8, 0.1, 0.0], [0.0, 0.2, 0.7, 0.6], [1.0, 0, 0, 0.5]])
    layer.eval()
    top = masks.top_k(layer.masks[...], 2)
    chex.assert_trees_all_close(layer(x), jnp.einsum("jk,k...->j...", top, x), rtol=1e-6)
    random = mnnx.MaskedAggregation(3, 4, fan_in=2, connectivity="random", rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(random.connectivity[...]).sum(-1), 2)
    with pytest.raises(ValueError, match="fan_in"):
        mnnx.MaskedAggregation(3, 4, fan_in=5, rngs=nnx.Rngs(0))
