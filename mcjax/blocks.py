"""Bottleneck blocks and multi-branch modules, as pure functions.

A module holds ``C`` bottleneck blocks (docs/design.md §1)::

    F(x; theta_j) = BN(conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1(x))))))))

with channels ``c_in -> b -> b -> c_out`` and the stride in the 3x3 conv, and one
shortcut ``S`` per module (identity, or a 1x1 projection + BN shared by the
blocks when the shape changes). Module forms:

* :func:`multi_branch_module`: each block ``j`` has its own input ``x_j`` and
  output ``y_j = ReLU(S(x_j) + F(x_j; theta_j))`` (MaskConnect, paper Eq. 2);
  each block keeps its own last BN, since each output is its own stream.
* :func:`resnext_module`: one stream, ResNeXt exactly (Xie et al. 2017, form (c)):
  the C bottlenecks' last 1x1 convs act on their concatenation as one dense conv,
  followed by **one** BN, ``y = ReLU(S(x) + BN(sum_j conv3_j(h_j)))``. With
  per-branch last BNs (``bn3`` of shape ``[C, c_out]``, the parameterisation of the
  masked modes) it computes ``y = ReLU(S(x) + sum_j F(x; theta_j))`` instead: the
  "same parameters as learned" ablation.

Parameters of the ``C`` blocks are stacked on a leading branch axis (kernels
``[C, kh, kw, c_in, c_out]``, BN vectors ``[C, c]``), so a pruned module is a
slice, and the C branches are computed with one of several formulations
(``BRANCH_IMPLS``) that give the same function of the same parameters;
``"auto"`` picks the one measured fastest on the backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mcjax import layers
from mcjax.architectures import ModuleSpec

Array = jax.Array

BRANCH_IMPLS = ("auto", "loop", "grouped", "vmap", "einsum")

# Measured train-step speed per backend (benchmarks/RESULTS.md): on XLA:CPU grouped
# convolutions are several times slower than one ordinary convolution per branch, and
# the masked modes' 1x1 convolutions as one batched matmul ("einsum") beat C ordinary
# ones (29,8,8, batch 32: learned 3%, random 7% faster, compiles 25% faster; full runs
# the same code either way); on GPU/TPU grouped convolutions are the native formulation.
_AUTO_IMPL = {"cpu": "einsum", "gpu": "grouped", "tpu": "grouped"}

__all__ = [
    "BRANCH_IMPLS",
    "has_per_branch_bn3",
    "init_module",
    "multi_branch_module",
    "residual_functions",
    "resnext_module",
    "resnext_residual",
    "resolve_branch_impl",
    "shortcut",
]


def resolve_branch_impl(impl: str, backend: str | None = None) -> str:
    """The concrete formulation that ``impl`` names on ``backend`` (default: JAX's)."""
    if impl not in BRANCH_IMPLS:
        raise ValueError(f"branch_impl must be one of {BRANCH_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return _AUTO_IMPL.get(backend or jax.default_backend(), "grouped")


def init_module(
    key: Array,
    spec: ModuleSpec,
    *,
    per_branch_bn3: bool = True,
    zero_init_residual: bool = False,
) -> tuple[dict, dict]:
    """Parameters and BN statistics of one module.

    Args:
      key: a PRNG key.
      spec: the module's shape.
      per_branch_bn3: each block keeps its own BN after its last 1x1 conv
        (``bn3 [C, c_out]``: the masked modes, and the per-branch-BN ablation of
        ``full``); when False, one BN after the sum of the branches (``bn3
        [c_out]``: the ResNeXt module).
      zero_init_residual: start the scale of the last BN(s) at 0, so that every
        block (or the module's residual) starts as the shortcut, as flax's
        ImageNet ResNet does.

    Returns:
      ``(params, stats)``. ``params`` has ``conv1 [C,1,1,c_in,b]``,
      ``conv2 [C,3,3,b,b]``, ``conv3 [C,1,1,b,c_out]``, ``bn1``/``bn2`` with
      ``scale``/``bias`` of shape ``[C, b]``, ``bn3`` of shape ``[C, c_out]`` or
      ``[c_out]`` (see ``per_branch_bn3``), and, when the module projects,
      ``shortcut = {conv [1,1,c_in,c_out], bn}``. ``stats`` mirrors the BNs
      (``mean``/``var``).
    """
    c, b = spec.cardinality, spec.bottleneck
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params, stats = {}, {}
    params["conv1"] = layers.he_normal(k1, (c, 1, 1, spec.in_channels, b))
    params["conv2"] = layers.he_normal(k2, (c, 3, 3, b, b))
    params["conv3"] = layers.he_normal(k3, (c, 1, 1, b, spec.out_channels))
    bn3_shape = (c, spec.out_channels) if per_branch_bn3 else (spec.out_channels,)
    for name, shape in (("bn1", (c, b)), ("bn2", (c, b)), ("bn3", bn3_shape)):
        params[name], stats[name] = layers.bn_init(shape)
    if zero_init_residual:
        params["bn3"]["scale"] = jnp.zeros_like(params["bn3"]["scale"])
    if spec.has_projection:
        bn_params, bn_stats = layers.bn_init((spec.out_channels,))
        params["shortcut"] = {
            "conv": layers.he_normal(k4, (1, 1, spec.in_channels, spec.out_channels)),
            "bn": bn_params,
        }
        stats["shortcut"] = {"bn": bn_stats}
    return params, stats


def has_per_branch_bn3(params: dict) -> bool:
    """Whether a module's parameters keep one last BN per block (``bn3 [C, c_out]``)."""
    return params["bn3"]["scale"].ndim == 2


# --- The C residual functions --------------------------------------------------


def _fused_first_conv(x: Array, kernel: Array) -> Array:
    """All C branches' first 1x1 conv on a *shared* input as one dense conv.

    ``x [N,H,W,c_in]``, ``kernel [C,1,1,c_in,b]`` -> ``[N,H,W,C*b]`` (branch-major).
    """
    c, kh, kw, c_in, b = kernel.shape
    dense = jnp.moveaxis(kernel, 0, 3).reshape(kh, kw, c_in, c * b)
    return layers.conv2d(x, dense)


def _to_grouped(x: Array) -> Array:
    """``[C,N,H,W,c]`` -> ``[N,H,W,C*c]`` (branch-major channels)."""
    c, n, h, w, ch = x.shape
    return jnp.moveaxis(x, 0, 3).reshape(n, h, w, c * ch)


def _from_grouped(x: Array, branches: int) -> Array:
    """``[N,H,W,C*c]`` -> ``[C,N,H,W,c]``."""
    n, h, w, cc = x.shape
    return jnp.moveaxis(x.reshape(n, h, w, branches, cc // branches), 3, 0)


def _grouped_conv(x: Array, kernel: Array, stride: int) -> Array:
    """Grouped layout ``[N,H,W,C*c_in]`` with ``kernel [C,kh,kw,c_in,c_out]``."""
    c, kh, kw, c_in, c_out = kernel.shape
    grouped = jnp.moveaxis(kernel, 0, 3).reshape(kh, kw, c_in, c * c_out)
    return layers.conv2d(x, grouped, stride=stride, feature_group_count=c)


def _branch_conv(x: Array, kernel: Array, stride: int, impl: str) -> Array:
    """Branch layout ``[C,N,H,W,c_in]`` with ``kernel [C,...]`` -> ``[C,N,H',W',c_out]``."""
    if impl == "loop":
        # Unrolled at trace time: C ordinary convolutions.
        return jnp.stack(
            [layers.conv2d(x[j], kernel[j], stride=stride) for j in range(kernel.shape[0])]
        )
    if impl == "vmap":
        return jax.vmap(lambda xj, kj: layers.conv2d(xj, kj, stride=stride))(x, kernel)
    if impl == "einsum":
        # 1x1 convolutions of all branches as one batched matmul; 3x3 looped.
        if kernel.shape[1:3] == (1, 1):
            xs = x[:, :, ::stride, ::stride] if stride > 1 else x
            return jnp.einsum("cnhwi,cio->cnhwo", xs, kernel[:, 0, 0].astype(x.dtype))
        return _branch_conv(x, kernel, stride, "loop")
    raise AssertionError(impl)


def residual_functions(
    params: dict,
    stats: dict,
    x: Array,
    *,
    stride: int,
    train: bool,
    impl: str = "auto",
    axis_name: str | None = None,
) -> tuple[Array, dict]:
    """The C residual functions ``F(x_j; theta_j)`` of a module (no shortcut).

    Args:
      params, stats: one module's, as from :func:`init_module` (C = leading axis).
      x: either a shared input ``[N,H,W,c_in]`` fed to every block, or per-block
        inputs ``[C,N,H,W,c_in]``.
      stride: stride of the 3x3 convolutions.
      train: batch statistics (and updated running statistics) when True.
      impl: one of :data:`BRANCH_IMPLS`; all give the same function.
      axis_name: mapped axis over which BN statistics are averaged, if any.

    Returns:
      ``(f, new_stats)`` with ``f: [C, N, H/stride, W/stride, c_out]``.
    """
    impl = resolve_branch_impl(impl)
    c = params["conv1"].shape[0]
    shared = x.ndim == 4
    if not shared and x.shape[0] != c:
        raise ValueError(f"per-block input has {x.shape[0]} blocks, the module has {c}")
    bn = dict(train=train, axis_name=axis_name)
    new_stats = dict(stats)

    if impl == "grouped":
        # Work in the grouped layout [N,H,W,C*c], where per-branch BN is per-channel BN.
        h = (
            _fused_first_conv(x, params["conv1"])
            if shared
            else _grouped_conv(_to_grouped(x), params["conv1"], 1)
        )
        h, new_stats["bn1"] = layers.batch_norm(
            h, params["bn1"], stats["bn1"], axes=(0, 1, 2), **bn
        )
        h = _grouped_conv(jax.nn.relu(h), params["conv2"], stride)
        h, new_stats["bn2"] = layers.batch_norm(
            h, params["bn2"], stats["bn2"], axes=(0, 1, 2), **bn
        )
        h = _grouped_conv(jax.nn.relu(h), params["conv3"], 1)
        h, new_stats["bn3"] = layers.batch_norm(
            h, params["bn3"], stats["bn3"], axes=(0, 1, 2), **bn
        )
        return _from_grouped(h, c), new_stats

    # Branch layout [C,N,H,W,c]; BN reduces over N, H, W per branch and channel.
    if shared:
        h = _from_grouped(_fused_first_conv(x, params["conv1"]), c)
    else:
        h = _branch_conv(x, params["conv1"], 1, impl)
    h, new_stats["bn1"] = layers.batch_norm(h, params["bn1"], stats["bn1"], axes=(1, 2, 3), **bn)
    h = _branch_conv(jax.nn.relu(h), params["conv2"], stride, impl)
    h, new_stats["bn2"] = layers.batch_norm(h, params["bn2"], stats["bn2"], axes=(1, 2, 3), **bn)
    h = _branch_conv(jax.nn.relu(h), params["conv3"], 1, impl)
    h, new_stats["bn3"] = layers.batch_norm(h, params["bn3"], stats["bn3"], axes=(1, 2, 3), **bn)
    return h, new_stats


def shortcut(
    params: dict,
    stats: dict,
    x: Array,
    *,
    stride: int,
    train: bool,
    axis_name: str | None = None,
) -> tuple[Array, dict]:
    """The module's shortcut ``S``: identity, or the shared projection + BN.

    ``x`` is ``[N,H,W,c_in]`` or per-block ``[C,N,H,W,c_in]``; the output has the
    same leading layout. With per-block inputs, the one projection is applied to
    every block's input and its BN statistics are taken over all of them.
    """
    if "shortcut" not in params:
        if stride != 1:
            raise ValueError("an identity shortcut cannot have stride > 1")
        return x, stats
    lead = x.shape[:-3]
    flat = x.reshape((-1, *x.shape[-3:]))
    s = layers.conv2d(flat, params["shortcut"]["conv"], stride=stride)
    s, bn_stats = layers.batch_norm(
        s,
        params["shortcut"]["bn"],
        stats["shortcut"]["bn"],
        axes=(0, 1, 2),
        train=train,
        axis_name=axis_name,
    )
    new_stats = dict(stats)
    new_stats["shortcut"] = {"bn": bn_stats}
    return s.reshape(lead + s.shape[1:]), new_stats


def multi_branch_module(
    params: dict,
    stats: dict,
    x: Array,
    *,
    stride: int,
    train: bool,
    impl: str = "auto",
    axis_name: str | None = None,
) -> tuple[Array, dict]:
    """MaskConnect module: ``y_j = ReLU(S(x_j) + F(x_j; theta_j))`` for each block.

    Args:
      x: a shared input ``[N,H,W,c_in]`` (the first module, fed by the stem) or
        per-block inputs ``[C,N,H,W,c_in]`` (from :func:`mcjax.masks.aggregate`).

    Returns:
      ``(y, new_stats)`` with per-block outputs ``y: [C,N,H',W',c_out]``.
    """
    f, stats = residual_functions(
        params, stats, x, stride=stride, train=train, impl=impl, axis_name=axis_name
    )
    s, stats = shortcut(params, stats, x, stride=stride, train=train, axis_name=axis_name)
    return jax.nn.relu(s + f), stats


def _grouped_layout_conv(x: Array, kernel: Array, stride: int, impl: str) -> Array:
    """Per-branch convs on the grouped layout ``[N,H,W,C*c_in]`` -> ``[N,H',W',C*c_out]``."""
    if impl == "grouped":
        return _grouped_conv(x, kernel, stride)
    c, _, _, c_in, _ = kernel.shape
    if impl in ("loop", "einsum"):
        # Unrolled at trace time: C ordinary convolutions on channel slices.
        return jnp.concatenate(
            [
                layers.conv2d(x[..., j * c_in : (j + 1) * c_in], kernel[j], stride=stride)
                for j in range(c)
            ],
            axis=-1,
        )
    return _to_grouped(_branch_conv(_from_grouped(x, c), kernel, stride, impl))


def resnext_residual(
    params: dict,
    stats: dict,
    x: Array,
    *,
    stride: int,
    train: bool,
    impl: str = "auto",
    axis_name: str | None = None,
) -> tuple[Array, dict]:
    """The residual of a ResNeXt module: ``BN(sum_j conv3_j(h_j))`` on one stream.

    ``h_j = ReLU(BN(conv3x3(ReLU(BN(conv1x1(x))))))`` is branch j's bottleneck. The
    C bottlenecks are kept concatenated (the grouped layout ``[N,H,W,C*b]``,
    branch-major), where per-branch BN is per-channel BN, so the sum of the C
    last 1x1 convs is one dense 1x1 conv with the stacked ``conv3`` read as a
    ``[C*b, c_out]`` matrix, followed by the one BN ``bn3 [c_out]``.

    Args:
      params, stats: a module's, from :func:`init_module` with ``per_branch_bn3=False``.
      x: ``[N,H,W,c_in]``.
      stride, train, impl, axis_name: as :func:`residual_functions`.

    Returns:
      ``(r, new_stats)`` with ``r: [N, H/stride, W/stride, c_out]``.
    """
    impl = resolve_branch_impl(impl)
    if has_per_branch_bn3(params):
        raise ValueError("resnext_residual needs one bn3 over c_out, got per-branch bn3")
    bn = dict(train=train, axis_name=axis_name, axes=(0, 1, 2))
    new_stats = dict(stats)
    h = _fused_first_conv(x, params["conv1"])
    h, new_stats["bn1"] = layers.batch_norm(h, params["bn1"], stats["bn1"], **bn)
    h = _grouped_layout_conv(jax.nn.relu(h), params["conv2"], stride, impl)
    h, new_stats["bn2"] = layers.batch_norm(h, params["bn2"], stats["bn2"], **bn)
    c, kh, kw, b, c_out = params["conv3"].shape
    h = layers.conv2d(jax.nn.relu(h), params["conv3"].reshape(kh, kw, c * b, c_out))
    h, new_stats["bn3"] = layers.batch_norm(h, params["bn3"], stats["bn3"], **bn)
    return h, new_stats


def resnext_module(
    params: dict,
    stats: dict,
    x: Array,
    *,
    stride: int,
    train: bool,
    impl: str = "auto",
    axis_name: str | None = None,
) -> tuple[Array, dict]:
    """ResNeXt module on one stream: ``y = ReLU(S(x) + R(x))``.

    ``R`` is :func:`resnext_residual` (one BN after the sum of the branches) when
    ``params["bn3"]`` is ``[c_out]``, and ``sum_j F(x; theta_j)`` (per-branch
    last BNs, :func:`residual_functions`) when it is ``[C, c_out]``.

    ``x: [N,H,W,c_in]`` -> ``y: [N,H',W',c_out]``.
    """
    if x.ndim != 4:
        raise ValueError(f"resnext_module takes one stream [N,H,W,C], got shape {x.shape}")
    common = dict(stride=stride, train=train, axis_name=axis_name)
    if has_per_branch_bn3(params):
        f, stats = residual_functions(params, stats, x, impl=impl, **common)
        r = f.sum(axis=0)
    else:
        r, stats = resnext_residual(params, stats, x, impl=impl, **common)
    s, stats = shortcut(params, stats, x, **common)
    return jax.nn.relu(s + r), stats
