"""Masks: K-hot sampling without replacement, top-K, and the straight-through aggregate."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import masks

# --- Exact law of "K draws without replacement, proportional to the row" ------------


def _exact_inclusion(row, k):
    """P(entry i is among the K drawn), by enumerating every ordered draw.

    Each draw takes index ``i`` with probability ``row[i] / (sum of the row over the
    indices not taken yet)``. When the indices left all have weight 0 (a row with
    fewer than K positive entries, or an all-zero row), the draw is uniform among
    them, as ``masks.sample`` documents. Independent of ``masks.inclusion_probabilities``.
    """
    row = np.asarray(row, np.float64)
    c = row.size
    inclusion = np.zeros(c)
    pair = np.zeros((c, c))  # P(the unordered set drawn contains i and j), i != j

    def draw(taken, prob):
        if len(taken) == k:
            inclusion[list(taken)] += prob
            for a, b in itertools.permutations(taken, 2):
                pair[a, b] += prob
            return
        left = [i for i in range(c) if i not in taken]
        mass = sum(row[i] for i in left)
        for i in left:
            step = row[i] / mass if mass > 0 else 1.0 / len(left)
            if step > 0:
                draw((*taken, i), prob * step)

    draw((), 1.0)
    return inclusion, pair


def _binomial_tolerance(p, n, sigmas=5.0):
    return sigmas * np.sqrt(p * (1.0 - p) / n) + 1e-9


ROWS = np.array(
    [
        [0.5, 0.5, 0.5, 0.5, 0.5],  # the initial masks: uniform
        [0.9, 0.5, 0.1, 0.3, 0.05],
        [0.6, 0.2, 0.1, 0.05, 0.05],
        [0.0, 0.7, 0.2, 0.05, 0.05],  # a zero entry, still >= K positive ones
        [1.0, 0.0, 0.0, 0.0, 0.0],  # fewer than K positive entries (K >= 2)
        [0.0, 0.0, 0.0, 0.0, 0.0],  # all zero
    ],
    np.float32,
)
NUM_DRAWS = 20000


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sample_inclusion_frequencies_match_exact_law(k):
    # One vectorised call: NUM_DRAWS x rows x C, every row drawn independently.
    real = jnp.broadcast_to(jnp.asarray(ROWS), (NUM_DRAWS, *ROWS.shape))
    draws = np.asarray(masks.sample(jax.random.key(100 + k), real, k), np.float64)
    assert draws.shape == real.shape
    np.testing.assert_array_equal(draws.sum(-1), k)

    frequency = draws.mean(axis=0)
    for r, row in enumerate(ROWS):
        exact, pair = _exact_inclusion(row, k)
        np.testing.assert_allclose(exact.sum(), k, rtol=1e-12)
        tol = _binomial_tolerance(exact, NUM_DRAWS)
        assert np.all(np.abs(frequency[r] - exact) <= tol), (row, k, frequency[r], exact)
        if k >= 2:
            # The joint law too: how often each pair is drawn together.
            pair_freq = np.einsum("ni,nj->ij", draws[:, r], draws[:, r]) / NUM_DRAWS
            off = ~np.eye(len(row), dtype=bool)
            pair_tol = _binomial_tolerance(pair, NUM_DRAWS)
            assert np.all(np.abs(pair_freq - pair)[off] <= pair_tol[off]), (row, k)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_inclusion_probabilities_agree_with_enumeration(k):
    rows = ROWS[[0, 1, 2, 3, 5]]  # not the row with fewer than K positive entries
    got = np.asarray(masks.inclusion_probabilities(jnp.asarray(rows), k))
    assert got.shape == rows.shape
    for r, row in enumerate(rows):
        exact, _ = _exact_inclusion(row, k)
        np.testing.assert_allclose(got[r], exact, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_inclusion_probabilities_rows_with_fewer_than_k_positive_entries(k):
    row = np.array([[1.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    got = np.asarray(masks.inclusion_probabilities(jnp.asarray(row), k))
    exact, _ = _exact_inclusion(row[0], k)
    np.testing.assert_allclose(got[0], exact, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_sample_is_k_hot_with_leading_axes(dtype, k):
    # [modules, C, C] in one call.
    real = jax.random.uniform(jax.random.key(0), (5, 8, 8)).astype(dtype)
    binary = masks.sample(jax.random.key(1), real, k)
    chex.assert_shape(binary, real.shape)
    chex.assert_type(binary, dtype)
    values = np.asarray(binary, np.float32)
    assert set(np.unique(values)) <= {0.0, 1.0}
    np.testing.assert_array_equal(values.sum(-1), k)
    if k < 8:
        # The 40 rows are not all the same draw.
        assert len({tuple(r) for r in values.reshape(-1, 8)}) > 1


DEGENERATE = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.7, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.3, 0.0, 0.9, 0.0, 0.0],
        [1e-30, 0.0, 0.0, 0.0, 0.0, 0.0],  # tiny but alone: the whole row
        [2e-38, 4e-38, 0.0, 0.0, 0.0, 0.0],  # near the smallest normal float32
        [-1.0, 0.0, 0.5, 0.0, -0.2, 0.0],  # negative entries count as 0
    ],
    np.float32,
)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_sample_degenerate_rows(k):
    real = jnp.broadcast_to(jnp.asarray(DEGENERATE), (2000, *DEGENERATE.shape))
    binary = np.asarray(masks.sample(jax.random.key(k), real, k))
    assert not np.isnan(binary).any()
    assert set(np.unique(binary)) <= {0.0, 1.0}
    # Exactly k ones = k distinct valid indices.
    np.testing.assert_array_equal(binary.sum(-1), k)
    positive = DEGENERATE > 0
    for r in range(len(DEGENERATE)):
        drawn = binary[:, r]
        if positive[r].sum() <= k:
            # Every positive entry is always among the k.
            assert np.all(drawn[:, positive[r]] == 1), (DEGENERATE[r], k)
        else:
            # Zero entries only once the positive ones are exhausted.
            assert np.all(drawn[:, ~positive[r]] == 0), (DEGENERATE[r], k)
    # Rows with fewer than k positive entries fill up from every zero entry.
    if k == 3:
        assert np.all(binary[:, 0].mean(0) > 0.2)  # all-zero row: uniform, k/C = 0.5


def test_sample_takes_every_small_positive_entry():
    row = jnp.array([1.0, 1e-37, 0.0, 0.0, 0.0], jnp.float32)
    real = jnp.broadcast_to(row, (20000, 5))
    binary = np.asarray(masks.sample(jax.random.key(0), real, 3))
    np.testing.assert_array_equal(binary[:, :2], 1.0)


def test_sample_keys_and_jit():
    real = jax.random.uniform(jax.random.key(0), (4, 8, 8))
    a = masks.sample(jax.random.key(1), real, 3)
    b = masks.sample(jax.random.key(1), real, 3)
    c = masks.sample(jax.random.key(2), real, 3)
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a, c)
    jitted = jax.jit(masks.sample, static_argnums=2)(jax.random.key(1), real, 3)
    chex.assert_trees_all_equal(jitted, a)
    # Raw uint32 keys work the same way.
    raw = masks.sample(jax.random.PRNGKey(1), real, 3)
    np.testing.assert_array_equal(np.asarray(raw).sum(-1), 3)


@pytest.mark.parametrize("k", [0, 9, -1])
def test_sample_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        masks.sample(jax.random.key(0), jnp.ones((8, 8)), k)


def test_sample_rejects_vectors():
    with pytest.raises(ValueError, match="C_out, C_in"):
        masks.sample(jax.random.key(0), jnp.ones((8,)), 2)


def test_random_k_hot():
    binary = masks.random_k_hot(jax.random.key(0), (3, 8, 8), 4)
    chex.assert_shape(binary, (3, 8, 8))
    np.testing.assert_array_equal(np.asarray(binary).sum(-1), 4)
    assert not np.array_equal(binary, masks.random_k_hot(jax.random.key(1), (3, 8, 8), 4))


# --- top_k -----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 8])
def test_top_k_takes_the_k_largest(k):
    real = np.asarray(jax.random.uniform(jax.random.key(0), (3, 8, 8)))
    binary = np.asarray(masks.top_k(jnp.asarray(real), k))
    chex.assert_shape(binary, real.shape)
    expected = np.zeros_like(real)
    order = np.argsort(-real, axis=-1)[..., :k]
    np.put_along_axis(expected, order, 1.0, axis=-1)
    np.testing.assert_array_equal(binary, expected)


def test_top_k_ties_go_to_the_lower_index():
    real = jnp.array(
        [
            [0.5, 0.5, 0.5, 0.5, 0.5],
            [0.1, 0.7, 0.7, 0.7, 0.2],
            [0.0, 0.0, 0.3, 0.0, 0.0],
            [0.2, 0.9, 0.2, 0.2, 0.2],
        ]
    )
    expected_k2 = [[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 0, 0]]
    np.testing.assert_array_equal(masks.top_k(real, 2), expected_k2)
    expected_k3 = [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    np.testing.assert_array_equal(masks.top_k(real, 3), expected_k3)


@pytest.mark.parametrize("k", [0, 6])
def test_top_k_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        masks.top_k(jnp.ones((5, 5)), k)


# --- aggregate -------------------------------------------------------------------


def _aggregate_inputs(c_out=3, c_in=5, batch=()):
    keys = jax.random.split(jax.random.key(7), 3)
    real = jax.random.uniform(keys[0], (*batch, c_out, c_in))
    binary = masks.sample(keys[1], real, 2)
    outputs = jax.random.normal(keys[2], (*batch, c_in, 2, 4, 4, 3))
    return real, binary, outputs


def _loss(out):
    # A non-linear loss, so that the cotangent differs between blocks and positions.
    weights = jnp.linspace(-1.0, 2.0, out.size).reshape(out.shape)
    return jnp.sum(jnp.sin(out) * weights)


def _straight_through_reference(real, binary, outputs):
    # Forward uses the binary masks; d/d real = d/d binary (BinaryConnect).
    mixed = jax.lax.stop_gradient(binary) + real - jax.lax.stop_gradient(real)
    return jnp.einsum("jk,k...->j...", mixed, outputs)


def test_aggregate_forward_is_the_mask_product():
    real, binary, outputs = _aggregate_inputs()
    out = masks.aggregate(real, binary, outputs)
    chex.assert_shape(out, (3, 2, 4, 4, 3))
    chex.assert_trees_all_close(out, jnp.einsum("jk,k...->j...", binary, outputs), atol=1e-6)
    # Only the binary masks enter the forward pass.
    assert not np.allclose(out, jnp.einsum("jk,k...->j...", real, outputs), atol=1e-3)


def test_aggregate_vjp_formulas():
    real, binary, outputs = _aggregate_inputs()
    out, vjp = jax.vjp(masks.aggregate, real, binary, outputs)
    g = jax.random.normal(jax.random.key(3), out.shape)
    d_real, d_binary, d_outputs = vjp(g)
    # d real[j, k] = <g_j, y_k>; d y_k = sum_j binary[j, k] g_j; d binary = 0.
    g_flat, y_flat = np.asarray(g).reshape(3, -1), np.asarray(outputs).reshape(5, -1)
    expected_real = g_flat @ y_flat.T
    expected_outputs = np.einsum("jk,j...->k...", np.asarray(binary), np.asarray(g))
    np.testing.assert_allclose(d_real, expected_real, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_outputs, expected_outputs, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(d_binary, np.zeros_like(binary))
    chex.assert_type(d_real, real.dtype)


def test_aggregate_gradient_is_straight_through():
    real, binary, outputs = _aggregate_inputs()
    grads = jax.grad(lambda r, y: _loss(masks.aggregate(r, binary, y)), argnums=(0, 1))(
        real, outputs
    )
    ref = jax.grad(lambda r, y: _loss(_straight_through_reference(r, binary, y)), argnums=(0, 1))(
        real, outputs
    )
    chex.assert_trees_all_close(grads, ref, rtol=1e-5, atol=1e-5)
    # Under jit the same.
    jitted = jax.jit(jax.grad(lambda r, y: _loss(masks.aggregate(r, binary, y)), argnums=(0, 1)))(
        real, outputs
    )
    chex.assert_trees_all_close(jitted, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [0.25, 1.0 / 3.0])
def test_aggregate_scale_is_a_factor_on_the_output_and_the_gradients(scale):
    real, binary, outputs = _aggregate_inputs()

    def scaled_loss(r, y):
        return _loss(masks.aggregate(r, binary, y, scale=scale))

    def reference_loss(r, y):
        return _loss(scale * _straight_through_reference(r, binary, y))

    out = masks.aggregate(real, binary, outputs, scale=scale)
    expected = scale * jnp.einsum("jk,k...->j...", binary, outputs)
    chex.assert_trees_all_close(out, expected, rtol=1e-6, atol=1e-6)
    grads = jax.jit(jax.grad(scaled_loss, argnums=(0, 1)))(real, outputs)
    ref = jax.grad(reference_loss, argnums=(0, 1))(real, outputs)
    chex.assert_trees_all_close(grads, ref, rtol=1e-5, atol=1e-5)


def test_aggregate_with_real_masks_as_binary_is_exact():
    # The real-valued ablation: the exact gradient of real @ y.
    real, _, outputs = _aggregate_inputs()
    got = jax.grad(lambda r: _loss(masks.aggregate(r, r, outputs)))(real)
    exact = jax.grad(lambda r: _loss(jnp.einsum("jk,k...->j...", r, outputs)))(real)
    chex.assert_trees_all_close(got, exact, rtol=1e-5, atol=1e-5)


def test_aggregate_under_vmap_and_jit():
    real, binary, outputs = _aggregate_inputs(batch=(4,))

    def loss(r, y):
        return _loss(jax.vmap(masks.aggregate)(r, binary, y))

    out = jax.jit(jax.vmap(masks.aggregate))(real, binary, outputs)
    chex.assert_trees_all_close(
        out, jnp.einsum("bjk,bk...->bj...", binary, outputs), rtol=1e-5, atol=1e-6
    )
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(real, outputs)
    ref = jax.grad(
        lambda r, y: _loss(jax.vmap(_straight_through_reference)(r, binary, y)), argnums=(0, 1)
    )(real, outputs)
    chex.assert_trees_all_close(grads, ref, rtol=1e-5, atol=1e-5)
    # The mask gradient of each batch element uses only its own outputs.
    assert not np.allclose(grads[0][0], grads[0][1])


def test_aggregate_bfloat16_outputs():
    real, binary, outputs = _aggregate_inputs()
    outputs16 = outputs.astype(jnp.bfloat16)
    out = masks.aggregate(real, binary, outputs16)
    chex.assert_type(out, jnp.bfloat16)
    reference = jnp.einsum("jk,k...->j...", binary, outputs16.astype(jnp.float32))
    chex.assert_trees_all_close(out.astype(jnp.float32), reference, rtol=2e-2, atol=2e-2)
    d_real, d_outputs = jax.grad(
        lambda r, y: _loss(masks.aggregate(r, binary, y).astype(jnp.float32)), argnums=(0, 1)
    )(real, outputs16)
    chex.assert_type(d_real, jnp.float32)
    chex.assert_type(d_outputs, jnp.bfloat16)
    chex.assert_tree_all_finite((d_real, d_outputs))


def test_aggregate_rejects_mismatched_shapes():
    real, binary, outputs = _aggregate_inputs()
    with pytest.raises(ValueError, match="branches"):
        masks.aggregate(real, binary, outputs[:4])
    with pytest.raises(ValueError, match="same shape"):
        jax.vjp(masks.aggregate, real[:2], binary, outputs)


# --- One contract: leading axes, integer-like k, no gradient through the draw --------


def test_aggregate_with_leading_axes_equals_per_module_calls():
    real, binary, outputs = _aggregate_inputs(batch=(2, 3))
    out = masks.aggregate(real, binary, outputs)
    chex.assert_shape(out, (2, 3, 3, 2, 4, 4, 3))
    for a in range(2):
        for b in range(3):
            np.testing.assert_allclose(
                out[a, b], masks.aggregate(real[a, b], binary[a, b], outputs[a, b]), atol=1e-6
            )
    grads = jax.grad(lambda r, y: _loss(masks.aggregate(r, binary, y)), argnums=(0, 1))(
        real, outputs
    )
    ref = jax.grad(
        lambda r, y: _loss(jax.vmap(jax.vmap(_straight_through_reference))(r, binary, y)),
        argnums=(0, 1),
    )(real, outputs)
    chex.assert_trees_all_close(grads, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="leading"):
        masks.aggregate(real, binary, outputs[:1])


@pytest.mark.parametrize("k", [np.int64(2), np.int32(2), jnp.int32(2)])
def test_integer_like_k(k):
    real = jax.random.uniform(jax.random.key(0), (3, 5))
    np.testing.assert_array_equal(masks.top_k(real, k), masks.top_k(real, 2))
    np.testing.assert_array_equal(
        masks.sample(jax.random.key(1), real, k), masks.sample(jax.random.key(1), real, 2)
    )


@pytest.mark.parametrize("k", [2.0, True, "2"])
def test_non_integer_k_is_refused(k):
    with pytest.raises(TypeError, match="integer"):
        masks.top_k(jnp.ones((3, 5)), k)


def test_traced_k_gets_a_clear_error():
    real = jnp.ones((3, 5))
    with pytest.raises(TypeError, match="static"):
        jax.jit(masks.top_k)(real, 2)
    with pytest.raises(TypeError, match="static"):
        jax.jit(lambda key, k: masks.sample(key, real, k))(jax.random.key(0), 2)
    # As the message says: a static argument works.
    jax.jit(masks.top_k, static_argnames="k")(real, k=2)


def test_sample_and_top_k_have_zero_gradient():
    real = jax.random.uniform(jax.random.key(0), (3, 5))
    weights = jnp.arange(15.0).reshape(3, 5)
    for fn in (lambda r: masks.sample(jax.random.key(1), r, 2), lambda r: masks.top_k(r, 2)):
        np.testing.assert_array_equal(jax.grad(lambda r, f=fn: (f(r) * weights).sum())(real), 0)


def test_dtypes_as_documented():
    real16 = jax.random.uniform(jax.random.key(0), (3, 5)).astype(jnp.bfloat16)
    chex.assert_type(masks.sample(jax.random.key(1), real16, 2), jnp.bfloat16)
    chex.assert_type(masks.top_k(real16, 2), jnp.bfloat16)
    chex.assert_type(masks.random_k_hot(jax.random.key(1), (3, 5), 2), jnp.float32)
