"""LINAS fits surrogates only for values it cannot have exactly: an objective with a cheap exact
`batch` (an analytic count, a fitted predictor) is used as it is in the inner NSGA-II."""

from __future__ import annotations

import numpy as np
import pytest

import search.optimizers.linas as linas
import supernets
from search import Evaluator, SearchProblem, create_optimizer
from search.objectives import Objective, ObjectiveContext, make_objective
from tests.test_search_core import SPACE, toy_objectives


def problem_with(batch_for_size: bool):
    (acc, size), _ = toy_objectives()
    counter = size.fn
    calls = []

    def batch(archs):
        calls.append(len(archs))
        return [counter(a) for a in archs]

    exact = Objective("macs", counter, "min", "MACs", batch=batch if batch_for_size else None)
    return SearchProblem(Evaluator(SPACE, [acc, exact], budget=40, seed=0)), calls


@pytest.mark.parametrize("exact", [True, False])
def test_a_surrogate_is_fitted_only_for_values_without_an_exact_batch(monkeypatch, exact):
    fitted = []
    real = linas.select_regressor
    monkeypatch.setattr(linas, "select_regressor",
                        lambda X, y, **kw: fitted.append(len(y)) or real(X, y, **kw))
    problem, calls = problem_with(exact)
    create_optimizer("linas", pop_size=8, inner_pop_size=16, inner_generations=3).run(problem)
    rounds = problem.generation
    assert rounds >= 2
    assert len(fitted) == rounds * (1 if exact else 2)  # top1 always; macs only without batch
    assert sum(calls) >= rounds * 16 if exact else calls == []


def test_params_and_predictors_give_exact_batches_that_equal_their_values():
    net = supernets.create("mbv3", preset="tiny", num_classes=3, in_chans=1)
    params = make_objective("params", ObjectiveContext(supernet=net, input_shape=(1, 32, 32)))
    archs = [net.space.sample(np.random.default_rng(i)) for i in range(4)]
    assert params.batch(archs) == [params(a) for a in archs]
