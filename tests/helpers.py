"""Independent references shared by several test files (written from MMPose 0.x, loops and all).

  mm_decode_default        `_get_max_preds` + quarter offset (top_down_eval.py)
  mm_flip_back             `flip_back` without the shift (post_transforms.py)
  mm_get_affine_transform  `get_affine_transform` with shift 0 (post_transforms.py)
  mm_oks_nms               `oks_nms` (core/post_processing/nms.py), one pair at a time
  heatmap_mse_mean         the scalar loss value of JointsMSELoss
  blur_heatmaps_jnp, decode_unbiased_jnp   the package's own (export.py puts on-device DARK
                           decoding into exported files), re-exported for the older tests
  tensorboard_scalars      a TensorBoard run folder's scalars as TensorBoard shows them
"""
from __future__ import annotations

import pathlib
import struct

import cv2
import numpy as np

from sbpose_jax import heatmaps as heatmaps_lib
from sbpose_jax.training import losses


def mm_decode_default(hm_nkhw):
  """(N, K, H, W) -> coords (N, K, 2) float32 heatmap x, y; maxvals (N, K)."""
  n, k, h, w = hm_nkhw.shape
  flat = hm_nkhw.reshape((n, k, -1))
  idx = np.argmax(flat, 2).reshape((n, k, 1))
  maxvals = np.amax(flat, 2).reshape((n, k, 1))
  preds = np.tile(idx, (1, 1, 2)).astype(np.float32)
  preds[:, :, 0] = preds[:, :, 0] % w
  preds[:, :, 1] = preds[:, :, 1] // w
  preds = np.where(np.tile(maxvals, (1, 1, 2)) > 0.0, preds, -1)
  for i in range(n):
    for j in range(k):
      hmap = hm_nkhw[i][j]
      px, py = int(preds[i][j][0]), int(preds[i][j][1])
      if 1 < px < w - 1 and 1 < py < h - 1:
        diff = np.array([hmap[py][px + 1] - hmap[py][px - 1], hmap[py + 1][px] - hmap[py - 1][px]])
        preds[i][j] += np.sign(diff) * .25
  return preds.astype(np.float32), maxvals[..., 0]


def mm_decode_default_nhwc(heatmaps):
  """`mm_decode_default` of (B, H, W, K) maps."""
  return mm_decode_default(np.ascontiguousarray(np.asarray(heatmaps).transpose(0, 3, 1, 2)))


def mm_flip_back(hm_nkhw, flip_pairs):
  """(N, K, H, W) maps of a mirrored crop: flip pairs swapped, W mirrored (no shift)."""
  out = hm_nkhw.copy()
  for a, b in flip_pairs:
    out[:, a], out[:, b] = hm_nkhw[:, b].copy(), hm_nkhw[:, a].copy()
  return out[..., ::-1]


def flip_back_nhwc(heatmaps, flip_pairs, shift: bool = True):
  """`mm_flip_back` of (B, H, W, K) maps, then MMPose's `shift_heatmap` (one pixel right)."""
  out = mm_flip_back(np.asarray(heatmaps).transpose(0, 3, 1, 2), flip_pairs)
  if shift:
    out[..., 1:] = out[..., :-1].copy()
  return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def _rotate_point(pt, angle_rad):
  sn, cs = np.sin(angle_rad), np.cos(angle_rad)
  return [pt[0] * cs - pt[1] * sn, pt[0] * sn + pt[1] * cs]


def _third_point(a, b):
  direction = a - b
  return b + np.array([-direction[1], direction[0]], dtype=np.float32)


def mm_get_affine_transform(center, scale, rot, output_size, inv=False):
  """The (2, 3) crop matrix: centre/scale (scale x 200 px) rotated by `rot` degrees -> (W, H)."""
  scale_tmp = np.asarray(scale, np.float32) * 200.0
  src_w = scale_tmp[0]
  dst_w, dst_h = output_size
  rot_rad = np.pi * rot / 180
  src_dir = _rotate_point([0., src_w * -0.5], rot_rad)
  dst_dir = np.array([0., dst_w * -0.5])
  src = np.zeros((3, 2), dtype=np.float32)
  src[0, :] = center
  src[1, :] = center + np.asarray(src_dir)
  src[2, :] = _third_point(src[0, :], src[1, :])
  dst = np.zeros((3, 2), dtype=np.float32)
  dst[0, :] = [dst_w * 0.5, dst_h * 0.5]
  dst[1, :] = np.array([dst_w * 0.5, dst_h * 0.5]) + dst_dir
  dst[2, :] = _third_point(dst[0, :], dst[1, :])
  if inv:
    return cv2.getAffineTransform(np.float32(dst), np.float32(src))
  return cv2.getAffineTransform(np.float32(src), np.float32(dst))


def mm_oks_nms(kpts, scores, areas, thr, sigmas):
  """Indices kept by OKS-NMS, best first: kpts (N, K, >=2), scores (N,), areas (N,)."""
  order = list(np.argsort(scores)[::-1])
  keep = []
  var = (2 * sigmas) ** 2
  while order:
    i = order.pop(0)
    keep.append(i)
    rest = []
    for j in order:
      d2 = ((kpts[j, :, :2] - kpts[i, :, :2]) ** 2).sum(-1)
      e = d2 / var / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
      if np.mean(np.exp(-e)) <= thr:
        rest.append(j)
    order = rest
  return keep


def heatmap_mse_mean(pred, target, target_weight):
  """The scalar MMPose 2020 loss value: `losses.heatmap_mse` sum / count."""
  loss_sum, count = losses.heatmap_mse(pred, target, target_weight)
  return loss_sum / count


# On-device DARK decoding is library code again (export.py puts it inside exported files).
blur_heatmaps_jnp = heatmaps_lib.blur_heatmaps_jnp
decode_unbiased_jnp = heatmaps_lib.decode_unbiased_jnp


__all__ = ["mm_decode_default", "mm_decode_default_nhwc", "mm_flip_back", "flip_back_nhwc",
           "mm_get_affine_transform", "mm_oks_nms", "heatmap_mse_mean", "blur_heatmaps_jnp",
           "decode_unbiased_jnp", "heatmaps_lib", "tensorboard_scalars"]


def tensorboard_scalars(tb_dir) -> tuple[dict[str, list[tuple[int, float]]], list[int]]:
  """({tag: [(step, value), ...]}, purge steps) of the event files in `tb_dir`, as TensorBoard
  shows them: files in name order; in files of version `brain.Event:2` an event with
  `session_log.status == START` at step s drops every point of step >= s read before it
  (tensorboard's event_accumulator, `_CheckForRestartAndMaybePurge` -> `_Purge(by_tags=False)`).
  Reads the TFRecord framing (u64 length, u32 crc, data, u32 crc; CRCs not checked) with the
  protobufs tensorboardX ships (no TensorFlow or tensorboard needed).
  """
  # why: tensorBoard's writer loads only when logging starts
  from tensorboardX.proto import event_pb2
  scalars, purges = {}, []
  for path in sorted(pathlib.Path(tb_dir).glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      if event.HasField("session_log") and event.session_log.status == (
          event_pb2.SessionLog.START):
        purges.append(event.step)
        scalars = {tag: [(s, v) for s, v in points if s < event.step]
                   for tag, points in scalars.items()}
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars, purges
