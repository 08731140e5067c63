"""Search: objectives, latency, predictors, optimizers, Pareto utilities."""
