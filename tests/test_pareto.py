"""Pareto mask and hypervolume against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nasbench_core.errors import UserError
from search import hypervolume, pareto_mask


def brute_force_mask(F: np.ndarray) -> np.ndarray:
    """Minimisation: row i is dominated if some row is <= everywhere and < somewhere."""
    n = F.shape[0]
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if (F[j] <= F[i]).all() and (F[j] < F[i]).any():
                keep[i] = False
                break
    return keep


def brute_force_hv_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D hypervolume by a sweep over the front sorted by the first objective."""
    pts = points[(points < ref).all(axis=1)]
    pts = pts[brute_force_mask(pts)]
    pts = pts[np.argsort(pts[:, 0])]
    area, prev_y = 0.0, ref[1]
    for x, y in pts:
        area += (ref[0] - x) * (prev_y - y)
        prev_y = y
    return area


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_obj", [2, 3])
def test_mask_matches_brute_force(seed: int, n_obj: int) -> None:
    rng = np.random.default_rng(seed)
    F = rng.integers(0, 6, size=(60, n_obj)).astype(float)  # ties and duplicates on purpose
    assert (pareto_mask(F, ["min"] * n_obj) == brute_force_mask(F)).all()


def test_mask_handles_max_by_negation_on_dataframe() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"top1": rng.random(50), "latency_ms": rng.random(50) * 10})
    mask = pareto_mask(df, {"top1": "max", "latency_ms": "min"})
    expected = brute_force_mask(np.c_[-df["top1"], df["latency_ms"]])
    assert (mask == expected).all()


def test_nan_rows_are_never_on_front() -> None:
    F = np.array([[0.0, 0.0], [np.nan, -1.0], [1.0, 1.0]])
    assert pareto_mask(F, ["min", "min"]).tolist() == [True, False, False]


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_matches_sweep(seed: int) -> None:
    rng = np.random.default_rng(seed)
    F = rng.random((40, 2))
    ref = np.array([0.9, 0.9])  # some points lie beyond it
    assert hypervolume(F, ref, ["min", "min"]) == pytest.approx(brute_force_hv_2d(F, ref))


def test_hypervolume_max_direction_and_named_ref() -> None:
    df = pd.DataFrame({"top1": [0.9, 0.5], "latency_ms": [4.0, 1.0]})
    dirs = {"top1": "max", "latency_ms": "min"}
    # Rectangles (0.9 x 1) and (0.5 x 4) to ref (top1=0, latency=5) overlap in 0.5 x 1.
    assert hypervolume(df, {"top1": 0.0, "latency_ms": 5.0}, dirs) == pytest.approx(0.9 + 2.0 - 0.5)


def test_hypervolume_empty_when_nothing_beats_ref() -> None:
    assert hypervolume(np.array([[2.0, 2.0]]), [1.0, 1.0], ["min", "min"]) == 0.0


def test_bad_direction_and_missing_column_are_user_errors() -> None:
    with pytest.raises(UserError, match="direction 'up'"):
        pareto_mask(np.zeros((2, 1)), ["up"])
    with pytest.raises(UserError, match="'macs' not in table"):
        pareto_mask(pd.DataFrame({"top1": [1.0]}), {"macs": "min"})


def test_plot_front_draws_on_an_axes_the_caller_saves(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search import plot_front

    df = pd.DataFrame({"top1": [0.9, 0.5, 0.4], "latency_ms": [4.0, 1.0, 3.0]})
    ax = plot_front(df, {"top1": "max", "latency_ms": "min"}, feasible=np.array([True, True, False]))
    assert ax.get_xlabel() == "latency (ms)" and ax.get_ylabel() == "top-1 accuracy (%)"
    ax.figure.savefig(tmp_path / "p.png")
    plt.close(ax.figure)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
