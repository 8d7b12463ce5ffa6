"""Figures: each function writes a valid PNG; inconsistent inputs raise ValueError."""

import itertools
import sys

import numpy as np
import pytest

from mcjax import prune
from mcjax.figures import branches, connectivity, curves, sweep_figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LIVE_RGB = (0x4C, 0xAF, 0x50)  # mcjax.figures._common.LIVE_FACE
DEAD_RGB = (0xE6, 0xE6, 0xE6)  # mcjax.figures._common.DEAD_FACE


def _read_png(path) -> np.ndarray:
    """Checks the PNG signature, opens it with PIL when present; RGB pixels (or None)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return None
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > 200 and im.height > 200
        return np.asarray(im.convert("RGB"))


def _has_color(pixels: np.ndarray, rgb, min_pixels: int = 200) -> bool:
    """Whether a patch of that exact colour shows (anti-aliased lines give a few pixels)."""
    return int(np.all(pixels == np.asarray(rgb, np.uint8), axis=-1).sum()) >= min_pixels


def _live(binary):
    return prune.live_blocks(binary)


def _random_top_k(c, n_modules, k, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_modules - 1):
        m = np.zeros((c, c), np.int32)
        for j in range(c):
            m[j, rng.choice(c, k, replace=False)] = 1
        out.append(m)
    return out


# A hand-made C = 4, L = 3 connectivity (K = 1) where block 2 of module 2 reads block 0
# of module 1 but nobody reads it: it and module-1 blocks 0 and 3 are pruned.
M2 = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]])
M3 = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
SMALL_LIVE = [
    np.array([False, True, True, False]),
    np.array([True, True, False, True]),
    np.ones(4, bool),
]


def test_live_blocks_of_the_hand_made_example():
    live = _live([M2, M3])
    for got, want in zip(live, SMALL_LIVE, strict=True):
        np.testing.assert_array_equal(got, want)


def test_connectivity_small_with_pruned_blocks(tmp_path):
    path = tmp_path / "small.png"
    connectivity.plot_connectivity([M2, M3], SMALL_LIVE, path, title="hand-made", fan_in=1)
    pixels = _read_png(path)
    if pixels is not None:
        assert _has_color(pixels, LIVE_RGB)
        assert _has_color(pixels, DEAD_RGB)  # pruned blocks are drawn, distinctly


def test_connectivity_live_defaults_to_the_live_blocks_of_binary(tmp_path):
    # Lists of lists work too; the parent folder is created.
    path = tmp_path / "sub" / "dir" / "small.png"
    connectivity.plot_connectivity([M2.tolist(), M3.tolist()], None, str(path))
    _read_png(path)


def test_connectivity_large(tmp_path):
    binary = _random_top_k(32, 16, 2)
    live = _live(binary)
    assert not all(v.all() for v in live)  # some pruned blocks to draw
    path = tmp_path / "large.png"
    connectivity.plot_connectivity(binary, live, path, fan_in=2)
    pixels = _read_png(path)
    if pixels is not None:
        assert _has_color(pixels, LIVE_RGB)
        assert _has_color(pixels, DEAD_RGB)


def test_connectivity_full_resnext(tmp_path):
    path = tmp_path / "full.png"
    connectivity.plot_connectivity(None, [np.ones(8, bool)] * 5, path)
    pixels = _read_png(path)
    if pixels is not None:
        assert _has_color(pixels, LIVE_RGB)
        assert not _has_color(pixels, DEAD_RGB)  # no pruned blocks, no legend entry


def test_connectivity_of_modules_of_different_cardinality(tmp_path):
    rng = np.random.default_rng(1)
    sizes = [3, 5, 8, 2]
    binary = [(rng.random((b, a)) < 0.4).astype(int) for a, b in itertools.pairwise(sizes)]
    connectivity.plot_connectivity(binary, None, tmp_path / "var.png")
    _read_png(tmp_path / "var.png")


@pytest.mark.parametrize(
    "binary, live, match",
    [
        ([M2, M3[:, :3]], SMALL_LIVE, "columns"),  # consecutive masks disagree
        ([M2, M3], [np.ones(4, bool), np.ones(4, bool), np.ones(5, bool)], "shape"),
        ([M2, M3], SMALL_LIVE[:2], "modules"),  # one module missing
        ([M2], SMALL_LIVE, "modules"),  # one mask missing
        ([M2, M3.ravel()], SMALL_LIVE, "2-D"),
        ([M2, M3], [np.ones(4, bool), np.ones((4, 1), bool), np.ones(4, bool)], "1-D"),
        (None, None, "binary or live"),
        (None, [], "non-empty"),
    ],
)
def test_connectivity_rejects_inconsistent_shapes(tmp_path, binary, live, match):
    with pytest.raises(ValueError, match=match):
        connectivity.plot_connectivity(binary, live, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_active_branches_single_and_overlaid(tmp_path):
    k1 = _live(_random_top_k(8, 9, 1, seed=2))
    k4 = _live(_random_top_k(8, 9, 4, seed=3))
    branches.plot_active_branches(k1, tmp_path / "one.png", labels="K=1")
    branches.plot_active_branches({"K=1": k1, "K=4": k4}, tmp_path / "two.png", title="CIFAR-100")
    branches.plot_active_branches(
        {"a": k1, "b": k4}, tmp_path / "renamed.png", labels=["fan-in 1", "fan-in 4"]
    )
    big = _live(_random_top_k(32, 16, 16, seed=4))
    branches.plot_active_branches(big, tmp_path / "big.png")
    for name in ("one", "two", "renamed", "big"):
        _read_png(tmp_path / f"{name}.png")


@pytest.mark.parametrize(
    "live, labels",
    [
        ([], None),
        ({}, None),
        ([np.ones((2, 2), bool)], None),
        ({"K=1": SMALL_LIVE, "K=4": SMALL_LIVE}, ["only one"]),
        (SMALL_LIVE, ["a", "b"]),
    ],
)
def test_active_branches_rejects_bad_input(tmp_path, live, labels):
    with pytest.raises(ValueError):
        branches.plot_active_branches(live, tmp_path / "bad.png", labels=labels)


def _records(with_eval=True):
    """As the training loop logs: a record at step N carries the phase and rates of step
    N - 1, and each phase's last step (epochs 6 and 8 here) has a record."""
    recs, step = [], 0
    for phase, (e0, e1) in enumerate([(0.0, 6.0), (6.0, 8.0)], start=1):
        for epoch in np.arange(e0, e1, 0.5) + 0.5:
            step += 50
            r = {
                "step": step,
                "epoch": float(epoch),
                "phase": phase,
                "train/loss": 3.0 / (1 + epoch),
                "train/accuracy": epoch / 10,
                "lr/weights": 0.1 / phase,
            }
            if phase == 1:
                r.update({"lr/masks": 0.2, "masks/entropy": 2.0 / (1 + epoch), "masks/changed": 3})
            if step % 150 == 0:
                del r["train/accuracy"]  # keys may be missing
            recs.append(r)
            if with_eval and epoch == int(epoch):
                recs.append(
                    {"step": step, "epoch": float(epoch), "phase": phase, "test/loss": 2.0}
                    | ({"test/accuracy": 0.5} if epoch > 1 else {})
                )
    return recs


def test_learning_curves(tmp_path):
    curves.plot_learning_curves(_records(), tmp_path / "lc.png", title="run")
    _read_png(tmp_path / "lc.png")


def test_learning_curves_without_eval_or_with_sparse_records(tmp_path):
    curves.plot_learning_curves(_records(with_eval=False), tmp_path / "train_only.png")
    sparse = [
        {"step": 10, "train/loss": 2.0},  # no epoch: estimated from the step
        {"step": 20, "epoch": 0.2, "train/loss": 1.5, "phase": 1},
        {"step": 30, "epoch": 0.3, "phase": 2, "test/accuracy": 0.4, "lr/weights": None},
        {"step": 40},
        {"epoch": 0.5, "train/loss": float("nan")},
    ]
    curves.plot_learning_curves(sparse, tmp_path / "sparse.png")
    curves.plot_learning_curves([{"step": 1, "train/loss": 1.0}], tmp_path / "step_only.png")
    curves.plot_learning_curves([], tmp_path / "empty.png")
    for name in ("train_only", "sparse", "step_only", "empty"):
        _read_png(tmp_path / f"{name}.png")


def test_phase_boundary_is_where_the_phase_ends():
    recs = _records()
    xs, label = curves.x_coordinates(recs)
    assert label == "epoch"
    assert curves.phase_ends(recs, xs) == [(6.0, 2)]


def test_learning_curves_draw_phase_ends_and_rates_as_steps():
    fig = curves.learning_curves_figure(_records())
    panels = [ax for ax in fig.axes if ax.get_title()]  # not the right-hand twin axis
    assert len(panels) == 4
    for ax in panels:
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert [tuple(line.get_xdata()) for line in dashed] == [(6.0, 6.0)], ax.get_title()
    (lr_ax,) = [ax for ax in fig.axes if ax.get_title() == "learning rate"]
    weights = next(line for line in lr_ax.get_lines() if line.get_label() == "lr (weights)")
    assert weights.get_drawstyle() == "steps-pre"
    x, y = weights.get_xdata(), weights.get_ydata()
    assert x[0] == 0.0  # from the start of training
    # 0.1 up to and including epoch 6 (the last step of phase 1), then 0.05.
    np.testing.assert_array_equal(y[x <= 6.0], 0.1)
    np.testing.assert_array_equal(y[x > 6.0], 0.05)


def test_no_pyplot_figures_left_open(tmp_path):
    connectivity.plot_connectivity([M2, M3], SMALL_LIVE, tmp_path / "a.png")
    curves.plot_learning_curves(_records(), tmp_path / "b.png")
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_sweep_figures(tmp_path):
    series = {"learned": {1: [0.5, 0.6], 2: [0.7, 0.74], 4: [0.8]}}
    sweep_figures.plot_accuracy_vs_fan_in(
        series, tmp_path / "k.png", reference={"Fixed-Full": [0.71, 0.73]}
    )
    sweep_figures.plot_mean_active_branches(
        {"K=1": [[2, 3, 4], [1, 3, 4]], "K=4": [[4, 4, 4]]}, tmp_path / "b.png", cardinality=4
    )
    runs = [("learned", _records()), ("learned", _records()), ("full", _records(False))]
    sweep_figures.plot_sweep_learning_curves(runs, tmp_path / "c.png")
    for name in ("k", "b", "c"):
        _read_png(tmp_path / f"{name}.png")
    with pytest.raises(ValueError):
        sweep_figures.plot_accuracy_vs_fan_in({}, tmp_path / "none.png")
    with pytest.raises(ValueError, match="K=1"):
        sweep_figures.plot_mean_active_branches({"K=1": []}, tmp_path / "x.png", cardinality=4)
