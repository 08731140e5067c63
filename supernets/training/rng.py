"""Every random state a training run consumes, as JSON-able lists, so resume is bitwise exact."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng(generators: list[torch.Generator] = ()) -> dict[str, Any]:
    """Python, NumPy, torch (CPU, CUDA) and the given generators (data-loader shuffling)."""
    np_state = np.random.get_state(legacy=False)
    py_version, py_state, py_gauss = random.getstate()
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])},
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
        "generators": [g.get_state().tolist() for g in generators],
    }


def restore_rng(state: dict[str, Any], generators: list[torch.Generator] = ()) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    np_state = dict(state["numpy"])
    np_state["state"] = {
        "key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
        "pos": np_state["state"]["pos"],
    }
    np.random.set_state(np_state)
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    for gen, saved in zip(generators, state["generators"], strict=False):
        gen.set_state(torch.tensor(saved, dtype=torch.uint8))


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The torch generators a DataLoader shuffles with (loader, sampler, batch sampler)."""
    found: list[torch.Generator] = []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None),
    ]
    for gen in candidates:
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found
