"""Run a model from just before one layer onward, from cached activations (torch.fx).

A distortion curve prunes one layer at a time, so everything the model computes before that
layer is the same for every amount. Tracing the model once with torch.fx and cutting its graph
just before the layer's first use lets a curve re-run only what follows. What is cached at a
cut is the graph's live set there (the layer's input plus e.g. a residual branch), so any graph
shape works, not only chains of blocks. The cut also splits off the layer's own node, so several
amounts can share one forward of the rest of the network (their outputs stacked on the batch
dimension).

`trace_stages` returns None when the cached path cannot be trusted: fx cannot trace the model,
a layer is not reached by the graph, a live value is not a per-sample tensor (a batch size read
early and used late), or the staged forward disagrees with the model on a probe batch. Callers
then run the whole model per amount, as the reference computation does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn

from pruners.selection import Target


@dataclass
class Stages:
    """The traced model cut before each target: `starts[l]` is the graph position of target l's
    first use; `segment(i, j)` maps the live values at position i to those at j, and
    `to_output(i)` maps the live values at i to the model's output."""

    graph_module: fx.GraphModule
    nodes: list[fx.Node]
    starts: list[int]
    _last_use: dict[fx.Node, int]
    _cache: dict[tuple[int, int | None], fx.GraphModule]

    def live(self, i: int) -> list[fx.Node]:
        """Values made before position i and used at or after it (attributes are re-read)."""
        return [n for n in self.nodes[:i] if n.op != "get_attr" and self._last_use.get(n, -1) >= i]

    def segment(self, i: int, j: int | None) -> fx.GraphModule:
        """Graph module: live(i) values -> live(j) values as a tuple (j=None: the output)."""
        key = (i, j)
        if key not in self._cache:
            self._cache[key] = self._build(i, j)
        return self._cache[key]

    def _build(self, i: int, j: int | None) -> fx.GraphModule:
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {n: graph.placeholder(f"live_{k}") for k, n in enumerate(self.live(i))}

        def arg(n: fx.Node) -> fx.Node:
            if n not in env:  # an attribute read before the cut: read it again here
                env[n] = graph.node_copy(n, arg)
            return env[n]

        stop = len(self.nodes) if j is None else j
        for node in self.nodes[i:stop]:
            if node.op == "output":
                graph.output(fx.map_arg(node.args[0], arg))
                break
            env[node] = graph.node_copy(node, arg)
        if j is not None:
            graph.output(tuple(arg(n) for n in self.live(j)))
        return fx.GraphModule(self.graph_module, graph)

    @property
    def first(self) -> int:
        """Position just after the model's input placeholder: live there is the input alone."""
        return next(i for i, n in enumerate(self.nodes) if n.op != "placeholder")


def _first_call(nodes: Sequence[fx.Node], name: str) -> int | None:
    """Position of the first call of the module `name`, or of the leaf module that holds it."""
    return next((i for i, n in enumerate(nodes) if n.op == "call_module"
                 and (name == n.target or name.startswith(f"{n.target}."))), None)


def trace_stages(model: nn.Module, targets: Sequence[Target], probe: torch.Tensor) -> Stages | None:
    """Stages for `model` cut before each target, checked on `probe` (>= 2 samples), or None."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # any tracing failure means: run the whole model instead
        return None
    nodes = list(gm.graph.nodes)
    if sum(n.op == "placeholder" for n in nodes) != 1:
        return None
    pos = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((pos[u] for u in n.users), default=-1) for n in nodes}
    reads_weight = any(n.op == "get_attr" and str(n.target).startswith(f"{t.module_name}.")
                       for n in nodes for t in targets)  # a graph copy would keep a stale tensor
    starts = [_first_call(nodes, t.module_name) for t in targets]
    if reads_weight or any(s is None for s in starts):
        return None
    stages = Stages(gm, nodes, [int(s) for s in starts], last_use, {})
    try:
        ok = _agrees(model, stages, probe)
    except Exception:  # a graph that runs only whole (shape-dependent code, ...)
        return None
    return stages if ok else None


@torch.no_grad()
def _agrees(model: nn.Module, stages: Stages, probe: torch.Tensor) -> bool:
    """Every cut's live values are per-sample tensors and its staged output equals the model's."""
    want = model(probe)
    at, values = stages.first, [probe]
    for start in sorted(set(stages.starts)):
        values = list(stages.segment(at, start)(*values)) if start > at else values
        at = start
        if not all(isinstance(v, torch.Tensor) and v.dim() > 0 and len(v) == len(probe) for v in values):
            return False
        nxt = list(stages.segment(start, start + 1)(*values))
        if not all(isinstance(v, torch.Tensor) and v.dim() > 0 and len(v) == len(probe) for v in nxt):
            return False
        got = stages.segment(start + 1, None)(*nxt)
        if not (isinstance(got, torch.Tensor) and torch.allclose(got, want, rtol=1e-4, atol=1e-5)):
            return False
    return True
