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
slice. Every form runs the one bottleneck chain (:func:`_bottleneck`) with the
convolutions of a :class:`Formulation` (``BRANCH_IMPLS`` names them); all give the
same function of the same parameters, and ``"auto"`` picks the one measured fastest
on the backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mcjax import layers
from mcjax.architectures import ModuleSpec

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Formulation:
    """How the convolutions of a module are computed.

    Attributes:
      pointwise: the 1x1 convolutions (the bottlenecks' first and last, the shared
        projection): ``"conv"``, XLA convolutions; ``"matmul"``, matrix products over the
        channel axis (a strided 1x1 convolution is the product of the strided slice).
      spatial: the C per-branch 3x3 convolutions: ``"loop"``, one ordinary convolution
        per branch (unrolled at trace time); ``"merged"``, runs of :func:`merge_factor`
        thin branches as one convolution with a block-diagonal kernel; ``"groups"``, one
        grouped convolution (``feature_group_count = C``); ``"vmap"``, ``jax.vmap`` of
        one convolution (XLA lowers it to a grouped convolution).
      merge_widths: for ``spatial="merged"``, the input width up to which thin branches
        are merged, at stride 1 and when strided (see :func:`merge_factor`).
    """

    pointwise: str
    spatial: str
    merge_widths: tuple[int, int] = (16, 32)

    def __post_init__(self):
        if self.pointwise not in ("conv", "matmul"):
            raise ValueError(f"pointwise must be 'conv' or 'matmul', got {self.pointwise!r}")
        if self.spatial not in ("loop", "merged", "groups", "vmap"):
            raise ValueError(f"unknown spatial formulation {self.spatial!r}")


FORMULATIONS = {
    "loop": Formulation(pointwise="conv", spatial="loop"),
    "grouped": Formulation(pointwise="conv", spatial="groups"),
    "vmap": Formulation(pointwise="conv", spatial="vmap"),
    "einsum": Formulation(pointwise="matmul", spatial="loop"),
    "merged": Formulation(pointwise="matmul", spatial="merged"),
}
BRANCH_IMPLS = ("auto", *FORMULATIONS)

# Measured train-step speed per backend (benchmarks/RESULTS.md, "Formulations"): on
# XLA:CPU a grouped convolution is several times slower than one ordinary convolution
# per branch, 1x1 convolutions run faster as matrix products (no layout copies around
# their weight gradients), and thin 3x3 branches merged into block-diagonal kernels beat
# one convolution each; on GPU/TPU the grouped convolution is the native formulation.
_AUTO_IMPL = {"cpu": "merged", "gpu": "grouped", "tpu": "grouped"}

__all__ = [
    "BRANCH_IMPLS",
    "FORMULATIONS",
    "Formulation",
    "formulation",
    "has_per_branch_bn3",
    "init_module",
    "merge_factor",
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


def formulation(impl: str | Formulation, backend: str | None = None) -> Formulation:
    """The :class:`Formulation` that ``impl`` names (a name of ``BRANCH_IMPLS``), or
    ``impl`` itself when it is one."""
    if isinstance(impl, Formulation):
        return impl
    return FORMULATIONS[resolve_branch_impl(impl, backend)]


def merge_factor(
    cardinality: int, bottleneck: int, stride: int, widths: tuple[int, int] = (16, 32)
) -> int:
    """How many branches ``spatial="merged"`` runs as one block-diagonal 3x3 convolution.

    A branch whose input width ``bottleneck`` is under the merge width (``widths[0]`` at
    stride 1, ``widths[1]`` when strided) is merged with its neighbours up to that width
    (never more than ``cardinality``); a wide one runs alone. Merging also multiplies the
    zero blocks (``m`` times the multiply-adds for ``m`` branches), so it pays only where
    XLA:CPU's convolution is overhead-bound: thin branches, and strided ones
    (benchmarks/RESULTS.md).
    """
    width = widths[1] if stride > 1 else widths[0]
    return max(1, min(cardinality, width // bottleneck))


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


# --- Layouts ----------------------------------------------------------------------
# The C branches' activations are either in the *branch* layout [C,N,H,W,c] (per-block
# streams) or in the *grouped* layout [N,H,W,C*c] (channels branch-major), where
# per-branch BN is per-channel BN.


def _to_grouped(x: Array) -> Array:
    """``[C,N,H,W,c]`` -> ``[N,H,W,C*c]`` (branch-major channels)."""
    c, n, h, w, ch = x.shape
    return jnp.moveaxis(x, 0, 3).reshape(n, h, w, c * ch)


def _from_grouped(x: Array, branches: int) -> Array:
    """``[N,H,W,C*c]`` -> ``[C,N,H,W,c]``."""
    n, h, w, cc = x.shape
    return jnp.moveaxis(x.reshape(n, h, w, branches, cc // branches), 3, 0)


def _branches_side_by_side(kernel: Array) -> Array:
    """``[C,1,1,c_in,b]`` -> ``[c_in, C*b]``: the C branches' 1x1 kernels on one input."""
    c, _, _, c_in, b = kernel.shape
    return jnp.moveaxis(kernel[:, 0, 0], 0, 1).reshape(c_in, c * b)


def _block_diagonal(kernel: Array) -> Array:
    """``[m,kh,kw,i,o]`` -> ``[kh,kw,m*i,m*o]``, branch j's kernel in diagonal block j."""
    m, kh, kw, c_in, c_out = kernel.shape
    if m == 1:
        return kernel[0]
    # A broadcast product with the identity, no sum: exact, and its transpose (the
    # kernel's gradient) reads back the diagonal blocks.
    eye = jnp.eye(m, dtype=kernel.dtype)
    return jnp.einsum("jhwab,jk->hwjakb", kernel, eye).reshape(kh, kw, m * c_in, m * c_out)


# --- Convolutions of one formulation ------------------------------------------------


def _dense_pointwise(x: Array, kernel: Array, stride: int, f: Formulation) -> Array:
    """A dense 1x1 convolution: ``x [..., H, W, c_in]``, ``kernel [c_in, c_out]``."""
    if f.pointwise == "matmul":
        if stride > 1:
            x = x[..., ::stride, ::stride, :]
        # One matrix [rows, c_in]: the weight gradient is then one product contracting the
        # rows, which XLA:CPU computes in place. Left as [..., H, W, c_in], it contracts
        # three or four axes and XLA:CPU first writes both operands transposed (the product
        # and its gradients up to 3.7x slower: benchmarks/weight_gradients.py).
        rows = x.reshape(-1, x.shape[-1])
        y = jax.lax.dot_general(rows, kernel.astype(x.dtype), (((1,), (0,)), ((), ())))
        return y.reshape(*x.shape[:-1], kernel.shape[-1])
    lead = x.shape[:-3]
    flat = x.reshape((-1, *x.shape[-3:]))
    y = layers.conv2d(flat, kernel[None, None], stride=stride)
    return y.reshape(lead + y.shape[1:])


def _branch_pointwise(x: Array, kernel: Array, f: Formulation) -> Array:
    """Per-branch 1x1 convolutions, branch layout: ``[C,N,H,W,i]``, ``[C,1,1,i,o]``."""
    if f.pointwise == "matmul":
        # One batched matrix product over the branch axis, on [C, rows, i] (see
        # _dense_pointwise: the weight gradient then contracts one axis).
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
        contract = (((2,), (1,)), ((0,), (0,)))
        y = jax.lax.dot_general(rows, kernel[:, 0, 0].astype(x.dtype), contract)
        return y.reshape(*x.shape[:-1], kernel.shape[-1])
    if f.spatial == "vmap":
        return jax.vmap(layers.conv2d)(x, kernel)
    return jnp.stack([layers.conv2d(x[j], kernel[j]) for j in range(kernel.shape[0])])


def _grouped_conv(x: Array, kernel: Array, stride: int) -> Array:
    """Grouped layout ``[N,H,W,C*c_in]`` with ``kernel [C,kh,kw,c_in,c_out]``, one
    grouped convolution."""
    c, kh, kw, c_in, c_out = kernel.shape
    grouped = jnp.moveaxis(kernel, 0, 3).reshape(kh, kw, c_in, c * c_out)
    return layers.conv2d(x, grouped, stride=stride, feature_group_count=c)


def _runs(kernel: Array, stride: int, f: Formulation) -> list[tuple[int, int]]:
    """``(start, stop)`` of the runs of branches computed as one convolution."""
    c = kernel.shape[0]
    merged = f.spatial == "merged"
    size = merge_factor(c, kernel.shape[3], stride, f.merge_widths) if merged else 1
    return [(start, min(c, start + size)) for start in range(0, c, size)]


def _spatial_grouped(x: Array, kernel: Array, stride: int, f: Formulation) -> Array:
    """Per-branch 3x3 convolutions, grouped layout ``[N,H,W,C*b]`` -> ``[N,H',W',C*b']``."""
    if f.spatial == "groups":
        return _grouped_conv(x, kernel, stride)
    if f.spatial == "vmap":
        return _to_grouped(_spatial_branch(_from_grouped(x, kernel.shape[0]), kernel, stride, f))
    c_in = kernel.shape[3]
    outputs = [
        layers.conv2d(
            x[..., start * c_in : stop * c_in],
            _block_diagonal(kernel[start:stop]),
            stride=stride,
        )
        for start, stop in _runs(kernel, stride, f)
    ]
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)


def _spatial_branch(x: Array, kernel: Array, stride: int, f: Formulation) -> Array:
    """Per-branch 3x3 convolutions, branch layout ``[C,N,H,W,b]`` -> ``[C,N,H',W',b']``."""
    if f.spatial == "groups":
        return _from_grouped(_grouped_conv(_to_grouped(x), kernel, stride), kernel.shape[0])
    if f.spatial == "vmap":
        return jax.vmap(lambda xj, kj: layers.conv2d(xj, kj, stride=stride))(x, kernel)
    outputs = []
    for start, stop in _runs(kernel, stride, f):
        if stop - start == 1:
            outputs.append(layers.conv2d(x[start], kernel[start], stride=stride)[None])
        else:
            merged = layers.conv2d(
                _to_grouped(x[start:stop]), _block_diagonal(kernel[start:stop]), stride=stride
            )
            outputs.append(_from_grouped(merged, stop - start))
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=0)


# --- The bottleneck chain -----------------------------------------------------------

Conv = Callable[[Array, Array], Array]


def _bottleneck(
    params: dict,
    stats: dict,
    x: Array,
    convs: tuple[Conv, Conv, Conv],
    *,
    bn_axes: tuple[int, ...],
    train: bool,
    axis_name: str | None,
) -> tuple[Array, dict]:
    """``BN3(conv3(ReLU(BN2(conv2(ReLU(BN1(conv1(x))))))))``: the one chain of every form.

    ``convs[i](h, params[f"conv{i + 1}"])`` is layer i's convolution in the chosen layout
    and formulation; BN ``i`` reduces over ``bn_axes`` of its input.
    """
    new_stats = dict(stats)
    h = x
    for index, conv in enumerate(convs, start=1):
        if index > 1:
            h = jax.nn.relu(h)
        h = conv(h, params[f"conv{index}"])
        h, new_stats[f"bn{index}"] = layers.batch_norm(
            h,
            params[f"bn{index}"],
            stats[f"bn{index}"],
            axes=bn_axes,
            train=train,
            axis_name=axis_name,
        )
    return h, new_stats


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
      impl: one of :data:`BRANCH_IMPLS` (or a :class:`Formulation`); all give the same
        function.
      axis_name: mapped axis over which BN statistics are averaged, if any.

    Returns:
      ``(f, new_stats)`` with ``f: [C, N, H/stride, W/stride, c_out]``.
    """
    f = formulation(impl)
    c = params["conv1"].shape[0]
    shared = x.ndim == 4
    if not shared and x.shape[0] != c:
        raise ValueError(f"per-block input has {x.shape[0]} blocks, the module has {c}")
    common = dict(train=train, axis_name=axis_name)

    def first_shared(h, kernel):  # [N,H,W,c_in] -> grouped [N,H,W,C*b]
        return _dense_pointwise(h, _branches_side_by_side(kernel), 1, f)

    if f.spatial == "groups":
        # The grouped layout throughout, where per-branch BN is per-channel BN.
        convs = (
            first_shared if shared else lambda h, k: _grouped_conv(h, k, 1),
            lambda h, k: _grouped_conv(h, k, stride),
            lambda h, k: _grouped_conv(h, k, 1),
        )
        h, new_stats = _bottleneck(
            params, stats, x if shared else _to_grouped(x), convs, bn_axes=(0, 1, 2), **common
        )
        return _from_grouped(h, c), new_stats

    # The branch layout [C,N,H,W,c]; BN reduces over N, H, W per branch and channel.
    convs = (
        (lambda h, k: _from_grouped(first_shared(h, k), c))
        if shared
        else (lambda h, k: _branch_pointwise(h, k, f)),
        lambda h, k: _spatial_branch(h, k, stride, f),
        lambda h, k: _branch_pointwise(h, k, f),
    )
    return _bottleneck(params, stats, x, convs, bn_axes=(1, 2, 3), **common)


def shortcut(
    params: dict,
    stats: dict,
    x: Array,
    *,
    stride: int,
    train: bool,
    impl: str = "auto",
    axis_name: str | None = None,
) -> tuple[Array, dict]:
    """The module's shortcut ``S``: identity, or the shared projection + BN.

    ``x`` is ``[N,H,W,c_in]`` or per-block ``[C,N,H,W,c_in]``; the output has the
    same leading layout. With per-block inputs, the one projection is applied to
    every block's input and its BN statistics are taken over all of them. ``impl``
    (:data:`BRANCH_IMPLS`) says how the projection is computed.
    """
    if "shortcut" not in params:
        if stride != 1:
            raise ValueError("an identity shortcut cannot have stride > 1")
        return x, stats
    kernel = params["shortcut"]["conv"][0, 0]
    s = _dense_pointwise(x, kernel, stride, formulation(impl))
    s, bn_stats = layers.batch_norm(
        s,
        params["shortcut"]["bn"],
        stats["shortcut"]["bn"],
        axes=tuple(range(s.ndim - 1)),
        train=train,
        axis_name=axis_name,
    )
    new_stats = dict(stats)
    new_stats["shortcut"] = {"bn": bn_stats}
    return s, new_stats


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
    common = dict(stride=stride, train=train, impl=impl, axis_name=axis_name)
    f, stats = residual_functions(params, stats, x, **common)
    s, stats = shortcut(params, stats, x, **common)
    return jax.nn.relu(s + f), stats


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
    f = formulation(impl)
    if has_per_branch_bn3(params):
        raise ValueError("resnext_residual needs one bn3 over c_out, got per-branch bn3")
    c, _, _, b, c_out = params["conv3"].shape
    convs = (
        lambda h, k: _dense_pointwise(h, _branches_side_by_side(k), 1, f),
        lambda h, k: _spatial_grouped(h, k, stride, f),
        lambda h, k: _dense_pointwise(h, k.reshape(c * b, c_out), 1, f),
    )
    return _bottleneck(params, stats, x, convs, bn_axes=(0, 1, 2), train=train, axis_name=axis_name)


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
    common = dict(stride=stride, train=train, impl=impl, axis_name=axis_name)
    if has_per_branch_bn3(params):
        f, stats = residual_functions(params, stats, x, **common)
        r = f.sum(axis=0)
    else:
        r, stats = resnext_residual(params, stats, x, **common)
    s, stats = shortcut(params, stats, x, **common)
    return jax.nn.relu(s + r), stats
