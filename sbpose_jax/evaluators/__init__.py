"""Evaluators: one module per metric family (docs/design.md, "Evaluators").

`registry.EVALUATORS[type](records, config)` makes an evaluator (`process(preds)`,
`compute(out_dir=None) -> dict[str, float]`); `loop.run_evaluation` runs a model over an
evaluation set into one; `results` buffers and checks predictions, `scoring` scores a results
file with no model; `table` prints the
published columns. The names below are the package's public surface.
"""
from sbpose_jax.evaluators.registry import EVALUATORS, EvalType, main_metric
from sbpose_jax.evaluators.results import PredictionBuffer, check_results
from sbpose_jax.evaluators.scoring import score_results_file
from sbpose_jax.evaluators.table import format_table

__all__ = ["EVALUATORS", "EvalType", "main_metric", "PredictionBuffer", "check_results",
           "score_results_file", "format_table"]
