"""What a training run shows and records: progress bar, TensorBoard, JSONL, prediction pictures.

Only process 0 writes; the others get a silent logger. Files in the workdir:
  metrics.jsonl    one JSON object per log line: {"step", "kind": "train"|"eval", ...}
  tb/              TensorBoard event files (tensorboardX: no TensorFlow needed)
  samples/<eval>_<step>.png   predicted skeletons on evaluation crops
"""
from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Mapping

import cv2
import numpy as np
from tqdm.auto import tqdm

from sbpose_jax import geometry
from sbpose_jax import visualize


METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: pathlib.Path, last_step: int) -> int:
  """Drops the lines of steps after `last_step` (a resumed run replays them); returns how many.

  A resumed run restarts from its checkpoint, so the lines a killed run wrote after it describe
  steps that are computed again: the file keeps one line per step and kind, the ones of the
  run that produced the final model. Rewritten atomically (a kill leaves the old file).
  """
  if not path.exists():
    return 0
  lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      step = int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
      continue  # a line cut by a kill
    if step <= last_step:
      kept.append(line if line.endswith("\n") else line + "\n")
  if len(kept) == len(lines):
    return 0
  tmp = path.with_suffix(".tmp")
  tmp.write_text("".join(kept), encoding="utf-8")
  tmp.replace(path)
  return len(lines) - len(kept)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch at module level whenever it is installed (only to accept torch
  tensors, which we never pass): 1.5 s more start-up for every training run on a machine that
  has torch. Hiding it during the import makes tensorboardX take its numpy-only path; a torch
  already imported by the user is left as it is. Imported here, not at the top: process 0 only.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None   # `import torch` raises ImportError while this is set
  try:
    # why: tensorBoard's writer loads only when logging starts
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


class RunLogger:
  """tqdm bar (step, loss, img/s, ETA) + TensorBoard + JSONL, for process 0 only."""

  def __init__(self, workdir, total_steps: int, start_step: int, enabled: bool = True,
               progress: bool = True):
    self.enabled = enabled
    self.workdir = pathlib.Path(workdir)
    self._bar = None
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    self.total_steps = total_steps
    if progress:
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", desc="train",
                       dynamic_ncols=True, smoothing=0.1)
    truncate_metrics(self.workdir / METRICS_FILE, start_step)
    self._jsonl = open(self.workdir / METRICS_FILE, "a", encoding="utf-8")
    try:
      SummaryWriter = _summary_writer_class()
      # A resumed run computes the steps after `start_step` again: the purge marker (a
      # SessionLog.START at start_step + 1) makes TensorBoard drop those steps' points of the
      # earlier event files, so each step shows once, the run's that produced the model.
      self._tb = SummaryWriter(str(self.workdir / "tb"),
                               purge_step=start_step + 1 if start_step else None)
    except ImportError:  # optional: JSONL still has everything
      self._tb = None

  def advance(self, n: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(n)

  def write(self, step: int, kind: str, values: Mapping[str, float]) -> None:
    """One JSONL line plus TensorBoard scalars `<kind>/<name>`."""
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in values.items()}
    self._jsonl.write(json.dumps({"step": int(step), "kind": kind, "time": time.time(), **clean})
                      + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        if math.isfinite(v):
          self._tb.add_scalar(f"{kind}/{k}", v, step)
      self._tb.flush()

  def train_line(self, step: int, values: Mapping[str, float]) -> None:
    """JSONL + TensorBoard; the bar's numbers, or (no bar) one printed line."""
    self.write(step, "train", values)
    ips = values.get("img_per_s", 0.0)
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{values['loss']:.3e}", img_s=f"{ips:.0f}",
                            lr=f"{values['lr']:.1e}", refresh=False)
    elif self.enabled:
      shown = {"loss": ".4e", "lr": ".2e", "grad_norm": ".3g", "epoch": ".2f"}
      print(f"step {step}/{self.total_steps} " + " ".join(
          f"{k} {values[k]:{f}}" for k, f in shown.items() if k in values)
            + (f" {ips:.1f} img/s" if ips else ""), flush=True)

  def eval_line(self, step: int, name: str, values: Mapping[str, float]) -> None:
    self.write(step, f"eval/{name}", values)
    self.message(f"step {step} {name}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in list(values.items())[:6]))

  def image(self, step: int, tag: str, rgb: np.ndarray) -> pathlib.Path | None:
    """Writes samples/<tag>_<step>.png and a TensorBoard image; returns the file."""
    if not self.enabled:
      return None
    out = self.workdir / "samples" / f"{tag}_{step:07d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if self._tb is not None:
      self._tb.add_image(f"samples/{tag}", rgb, step, dataformats="HWC")
      self._tb.flush()
    return out

  def message(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      print(text, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


def keypoints_to_crop(kpts: np.ndarray, center: np.ndarray, scale: np.ndarray,
                      input_wh) -> np.ndarray:
  """Image-space (B, K, 3) keypoints -> pixels of the (unrotated) evaluation crops."""
  out = np.array(kpts, np.float32, copy=True)
  for i in range(len(out)):
    m = geometry.affine_matrix(center[i], scale[i], 0.0, input_wh)
    out[i, :, :2] = geometry.affine_points(out[i, :, :2], m)
  return out


def sample_picture(batch: Mapping[str, np.ndarray], kpts: np.ndarray, dataset: str,
                   colour_order: str, input_wh, max_images: int = 16) -> np.ndarray:
  """A grid of evaluation crops with their predicted skeletons, RGB uint8."""
  mask = np.asarray(batch["mask"], bool)
  images = np.asarray(batch["image"])[mask][:max_images]
  crop_kpts = keypoints_to_crop(np.asarray(kpts)[mask][:max_images],
                                np.asarray(batch["center"])[mask][:max_images],
                                np.asarray(batch["scale"])[mask][:max_images], input_wh)
  tiles = []
  for img, k in zip(images, crop_kpts):
    rgb = img[..., ::-1] if colour_order == "bgr" else img
    tiles.append(visualize.draw_poses(np.ascontiguousarray(rgb), k[None], dataset))
  h, w = tiles[0].shape[:2]
  zoom = max(1, 192 // h)  # small training crops are hard to read at their own size
  return visualize.make_grid(tiles, cell_hw=(h * zoom, w * zoom))
