"""The one evaluation path: batches of an evaluation set -> predictions -> an evaluator's metrics.

`run_evaluation` is what `evaluate`, training's periodic evaluation and the scripts call. In a
multi-process run each process predicts its own share of the boxes (the evaluation pipeline
splits the batches); the predictions are gathered once, and every process then scores the whole
set, so all of them return the same metrics.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from sbpose_jax.data import pipeline

PredictFn = Callable[[Mapping[str, np.ndarray]], Any]
# Batch fields that travel with the predicted keypoints to `evaluator.process`.
_PASSED_ON = ("index", "center", "scale", "bbox_score")


def predict_batches(predict_fn: PredictFn, batches: Iterable[Mapping[str, np.ndarray]],
                    total: int | None = None, progress: bool = True, depth: int = 2
                    ) -> dict[str, np.ndarray]:
  """Runs `predict_fn` on every batch; returns the rows of all batches, padding included.

  Results are fetched `depth` batches late so that the host prepares and dispatches the next
  batches while the device is still busy (no blocking per batch).

  Returns:
    dict of index (N,), keypoints (N, K, 3), center (N, 2), scale (N, 2), bbox_score (N,) and
    mask (N,) bool (False on padding rows); N = 0 without batches.
  """
  pending = collections.deque()
  parts = []
  with tqdm(total=total, unit="box", disable=not progress, desc="evaluate",
            dynamic_ncols=True) as bar:
    def _drain():
      batch, out = pending.popleft()
      part = {k: np.asarray(batch[k]) for k in _PASSED_ON}
      part.update(keypoints=np.asarray(out, np.float32), mask=np.asarray(batch["mask"], bool))
      parts.append(part)
      bar.update(int(part["mask"].sum()))
    for batch in batches:
      pending.append((batch, predict_fn(batch)))
      if len(pending) > depth:
        _drain()
    while pending:
      _drain()
  if not parts:
    return {"mask": np.zeros(0, bool)}
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def feed(evaluator, predictions: Mapping[str, np.ndarray]) -> int:
  """Passes the unpadded rows of `predictions` to `evaluator.process`; returns their number."""
  mask = predictions["mask"]
  if mask.any():
    evaluator.process({k: v[mask] for k, v in predictions.items() if k != "mask"})
  return int(mask.sum())


def run_batches(predict_fn: PredictFn, batches: Iterable[Mapping[str, np.ndarray]], evaluator,
                total: int | None = None, progress: bool = True, depth: int = 2) -> int:
  """This process's batches through `predict_fn` into `evaluator.process`; returns #boxes."""
  return feed(evaluator, predict_batches(predict_fn, batches, total, progress, depth))


def run_evaluation(predict_fn: PredictFn, records, config, evaluator,
                   batch_size: int | None = None, progress: bool = True, out_dir=None
                   ) -> dict[str, float]:
  """Predicts every box of `records` and returns `evaluator.compute(out_dir)`.

  Every process of a multi-process run calls it: each predicts its share of the boxes, the
  predictions are gathered once (all shares have the same padded size), and each process
  scores the whole set.

  Args:
    predict_fn: from `inference.make_predict_fn` (or any batch -> (B, K, 3) image keypoints).
    records: `data.records.Records` of the evaluation set (one row per box).
    config: the evaluation's config; the evaluation pipeline reads its data fields.
    evaluator: an `evaluators.EVALUATORS[type](records, config)` instance.
    batch_size: boxes per batch (the last batches are padded); default config.test.batch_size.
    progress: show a tqdm bar counting boxes.
    out_dir: where `compute` writes the results file (None: nowhere).
  """
  batch_size = int(batch_size or config.test.batch_size)
  index, count = jax.process_index(), jax.process_count()
  if len(records):  # no boxes (e.g. no detections): the evaluator scores an empty result
    batches = pipeline.eval_dataset(records, config, batch_size, process_index=index,
                                    process_count=count)
    predictions = predict_batches(predict_fn, batches, len(records) if count == 1 else None,
                                  progress=progress)
    if count > 1:
      predictions = multihost_utils.process_allgather(predictions, tiled=True)
    feed(evaluator, predictions)
  return evaluator.compute(out_dir)
