"""The studies' figures (omnifuse.experiments.figures): each function draws a PNG for tiny inputs, into a folder
it creates, and returns its path."""

import numpy as np
import pytest

from omnifuse.experiments.figures import group_bars, imputation_curve, reliability_figure, sweep_figure, tsne_figure
from tests.helpers import assert_png


def _curve(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 1)) < 0.4).astype(np.float64)
    return y, np.clip(0.3 * y + 0.7 * rng.random((n, 1)), 0, 1)


@pytest.mark.parametrize("k", [2, 5])
def test_reliability_figure_one_panel_or_one_per_curve(tmp_path, k):
    curves = {f"m{i}": _curve(i) for i in range(k)}
    curves["empty"] = (np.zeros((0, 1)), np.zeros((0, 1)))  # a curve without rows is left out
    path = tmp_path / "figs" / "reliability.png"
    assert reliability_figure(path, curves, "binary", n_bins=5, title="tiny") == path
    assert_png(path)


@pytest.mark.parametrize("k", [2, 5])
def test_reliability_figure_before_and_after_calibration(tmp_path, k):
    """Two panels (before, after) for up to four curves; one panel per curve, before dashed, beyond. A curve
    without probabilities before calibration (a reference score, an old run) is drawn after only."""
    curves = {f"m{i}": _curve(i) for i in range(k)}
    before = {f"m{i}": (curves[f"m{i}"][0], curves[f"m{i}"][1] ** 0.5) for i in range(k - 1)}
    path = tmp_path / f"rel{k}.png"
    assert reliability_figure(path, curves, "binary", n_bins=5, title="tiny", before=before) == path
    assert_png(path)
    with_before = reliability_figure(tmp_path / "b.png", curves, "binary", before=before)
    without = reliability_figure(tmp_path / "a.png", curves, "binary")
    if k <= 4:  # a second panel: a wider image
        from PIL import Image

        assert Image.open(with_before).size[0] > 1.5 * Image.open(without).size[0]


def test_group_bars(tmp_path):
    rows = [
        {"method": m, "group": g, "auroc_mean": 0.6 + 0.1 * i + 0.05 * j, "auroc_sd": 0.02 if j else None}
        for i, m in enumerate(("concat", "omnifuse"))
        for j, g in enumerate(("img+rep", "img", "a" * 40))
    ]
    rows.append({"method": "sum", "group": "img", "auroc_mean": 0.55, "auroc_sd": float("nan")})
    path = tmp_path / "bars.png"
    got = group_bars(
        path,
        rows,
        ["concat", "omnifuse", "sum"],
        ["img+rep", "img", "a" * 40],
        "auroc",
        title="tiny",
        hlines={"reference": 0.7},
    )
    assert got == path
    assert_png(path)


def test_sweep_figure(tmp_path):
    rows = [
        {
            "method": m,
            "group": "overall",
            "subset": "as_is",
            "rate": r,
            "auroc_mean": 0.8 - 0.2 * r - 0.05 * i,
            "auroc_sd": 0.01 if r else float("nan"),
        }
        for i, m in enumerate(("omnifuse", "omnifuse_no_imp"))
        for r in (0.0, 0.3, 0.6)
    ]
    path = tmp_path / "sweep.png"
    assert sweep_figure(path, rows, ["omnifuse", "omnifuse_no_imp", "absent"], title="tiny") == path
    assert_png(path)


def test_imputation_curve(tmp_path):
    records = [
        {"epoch": e, "cos": {"img": 0.2 + 0.2 * (e + 1), "rep": 0.1 * (e + 1)}, "cos_miss": {"img": 0.1, "rep": 0.05}}
        for e in range(-1, 3)
    ]
    path = tmp_path / "imputation.png"
    assert imputation_curve(path, records, ["img", "rep"], val_auroc=[0.6, 0.7, 0.72], title="tiny") == path
    assert_png(path)
    assert_png(imputation_curve(tmp_path / "no_auroc.png", records, ["img"]))


def test_tsne_figure(tmp_path):
    rng = np.random.default_rng(0)
    maps = {m: (rng.normal(size=(20, 2)), rng.normal(size=(20, 2)) + 1) for m in ("img", "rep", "ehr", "notes")}
    path = tmp_path / "tsne.png"
    assert tsne_figure(path, maps, title="tiny") == path
    assert_png(path)
