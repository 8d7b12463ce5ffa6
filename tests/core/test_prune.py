"""Pruning: live-block analysis and function preservation."""

import zlib

import jax
import numpy as np
import pytest

from mcjax import costs, export, masks, models, prune
from mcjax.architectures import get_architecture


def test_live_blocks_of_a_hand_made_connectivity():
    # Three modules of C = 3. Module 3 reads blocks {0} and {0, 1} of module 2
    # and module 2's block 0 reads module-1 block 2, block 1 reads block 1,
    # block 2 (dead: nobody reads it) reads block 0.
    m2 = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    m3 = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    live = prune.live_blocks([m2, m3])
    np.testing.assert_array_equal(live[2], [True, True, True])
    np.testing.assert_array_equal(live[1], [True, True, False])
    # Module-1 block 0 is read only by the dead block 2 of module 2.
    np.testing.assert_array_equal(live[0], [False, True, True])


def test_live_blocks_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="rows"):
        prune.live_blocks([np.ones((3, 3)), np.ones((4, 4))])


def _randomize_stats(stats, key):
    # Non-trivial running statistics, so that eval mode is a real test.
    # (means near 0, variances in [0.5, 1.5]: positive means would ReLU everything away).
    def draw(path, leaf):
        k = jax.random.fold_in(key, zlib.crc32(jax.tree_util.keystr(path).encode()))
        if path[-1].key == "mean":
            return 0.1 * jax.random.normal(k, leaf.shape)
        return 0.5 + jax.random.uniform(k, leaf.shape)

    return jax.tree_util.tree_map_with_path(draw, stats)


@pytest.mark.parametrize("fan_in", [1, 2])
def test_pruned_logits_equal_unpruned(fan_in, jit_init, jit_apply):
    # Non-zero residual branches at init, so that every block matters to the logits.
    net = models.Network(
        get_architecture("20,2,4"), num_classes=5, fan_in=fan_in, zero_init_residual=False
    )
    variables = jit_init(jax.random.key(0), net)
    params = variables["params"]
    params["head"]["kernel"] = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
    # Real-valued masks that make many blocks dead for K = 1.
    params["masks"] = jax.random.uniform(jax.random.key(2), params["masks"].shape) ** 4
    stats = _randomize_stats(variables["batch_stats"], jax.random.key(3))
    binary = masks.top_k(params["masks"], fan_in)
    images = jax.random.normal(jax.random.key(4), (3, 16, 16, 3))

    # Jitted: eager dispatch of this 6-module network's ops took ~30 s on 2 cores.
    apply = jit_apply
    logits, _ = apply(net, params, stats, images, connectivity=binary, train=False)
    pruned = prune.drop_dead_blocks(net, params, stats, binary)
    pruned_logits, _ = apply(
        pruned.net,
        pruned.params,
        pruned.batch_stats,
        images,
        connectivity=pruned.connectivity,
        train=False,
    )
    scale = float(np.max(np.abs(logits)))
    assert scale > 1.0, "degenerate test: the logits vanish"
    assert float(np.max(np.abs(pruned_logits - logits))) / scale < 1e-5
    counts = [m.cardinality for m in pruned.net.arch.modules]
    assert counts == [int(k.sum()) for k in pruned.live]
    assert counts[-1] == 4
    if fan_in == 1:
        assert sum(counts) < 4 * len(counts), "expected dead blocks with K = 1"
    # The pruned parameters are exactly what the cost model predicts.
    assert (
        costs.count_params(pruned.params)
        == costs.network_costs(pruned.net.arch, image_size=16, num_classes=5)["params"]
    )
    assert "masks" not in pruned.params


def test_full_connectivity_prunes_nothing(jit_init):
    net = models.Network(get_architecture("11,2,4"), num_classes=3, connectivity="full")
    variables = jit_init(jax.random.key(0), net)
    pruned = prune.drop_dead_blocks(net, variables["params"], variables["batch_stats"], None)
    assert pruned.net == net and all(k.all() for k in pruned.live)
    learned = models.Network(get_architecture("11,2,4"), num_classes=3)
    with pytest.raises(ValueError, match="needs its masks"):
        prune.drop_dead_blocks(learned, variables["params"], variables["batch_stats"], None)


@pytest.mark.parametrize("per_branch_bn", [False, True])
def test_full_model_saves_and_loads(tmp_path, per_branch_bn, jit_init, jit_apply):
    """A ``full`` model (ResNeXt's one BN, or the per-branch ablation) survives export."""
    net = models.Network(
        get_architecture("11,2,4"),
        num_classes=3,
        connectivity="full",
        full_per_branch_bn=per_branch_bn,
    )
    variables = jit_init(jax.random.key(0), net)
    images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
    # One training-mode pass moves the BN statistics off their init.
    _, stats = jit_apply(
        net, variables["params"], variables["batch_stats"], images, connectivity=None, train=True
    )
    params = jax.tree.map(lambda a: a + 0.1, variables["params"])  # a head that is not zero
    pruned = prune.drop_dead_blocks(net, params, stats, None)
    export.save(
        str(tmp_path), pruned.net, pruned.params, pruned.batch_stats, None, mean_image=np.zeros(3)
    )
    model = export.load(str(tmp_path))
    assert model.net == net
    uint8 = np.asarray(jax.random.randint(jax.random.key(2), (4, 8, 8, 3), 0, 256), np.uint8)
    expected, _ = jit_apply(
        net, params, stats, uint8.astype(np.float32) / 255.0, connectivity=None, train=False
    )
    np.testing.assert_allclose(export.predict(model, uint8), expected, rtol=1e-6, atol=1e-6)
