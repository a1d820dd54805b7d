"""grain transforms of top-down training and evaluation, one class per augmentation.

They follow MMPose 0.x's pipeline (docs/reference.md §3): `RandomFlip → HalfBody →
RandomScaleRotation → TopDownAffine → GenerateTarget`; the maths lives in `geometry` and
`heatmaps`. Randomness comes only from the `rng` grain passes to `random_map`, drawn in the
reference's order and number (a step that cannot fire draws nothing), so one seed gives one
augmentation, and a generator fed the reference's draws gives the reference's crops.

An element is a dict describing one person instance; each transform returns a new dict and
never writes into the arrays it received (they may be views of shared `Records` arrays):

  image        (H, W, 3) uint8, the full decoded image (the crop after `TopDownAffine`)
  center       (2,) float32 crop centre, image pixels
  scale        (2,) float32 crop size / 200 (aspect-fixed, padded)
  rotation     float, degrees (absent = 0)
  joints       (K, 2) float32 image pixels (crop pixels after `TopDownAffine`,
               (K, 3) heatmap-space x, y, weight after `GenerateTarget`)
  joints_vis   (K,) float32 0/1
  flipped      bool, the instance was mirrored
  flip_pending bool, the image itself is not mirrored yet: `TopDownAffine` folds the mirror
               into its matrix instead of copying the flipped image (opt-in, not pixel-exact:
               see geometry.fold_flip)

Other keys (bbox_score, index, ...) pass through untouched. Normalisation is not done here:
images stay uint8 and `inference.normalize` runs on the device.
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
import grain
import numpy as np

from sbpose_jax import geometry
from sbpose_jax import heatmaps

Element = dict[str, Any]


def _require(element: Element, keys: Sequence[str], who: str) -> None:
  missing = [k for k in keys if k not in element]
  if missing:
    raise KeyError(f"{who}: element lacks {missing}; it has {sorted(element)}")


class RandomFlip(grain.transforms.RandomMap):
  """Mirrors the instance with probability `prob` (MM `TopDownRandomFlip`, §3.2).

  Draws `rand() <= prob`. Swaps the joint and visibility rows of every flip pair, maps
  `x' = W − 1 − x` (invisible joints become 0) and `c_x' = W − 1 − c_x`.
  By default the image is mirrored here, as the reference does. With `fold_into_affine` it is
  not copied: `flip_pending` tells `TopDownAffine` to sample the mirror, which under OpenCV 4
  changes ~0.75% of the crop's uint8 values by up to 8 levels (geometry.fold_flip).

  Reads image (width), joints, joints_vis, center; writes joints, joints_vis, center, flipped,
  flip_pending (and image when not folding).
  """

  def __init__(self, flip_pairs: Sequence[tuple[int, int]], prob: float = 0.5,
               fold_into_affine: bool = False):
    self.flip_pairs = tuple((int(a), int(b)) for a, b in flip_pairs)
    self.prob = float(prob)
    self.fold_into_affine = bool(fold_into_affine)

  def random_map(self, element: Element, rng: np.random.Generator) -> Element:
    _require(element, ("image", "joints", "joints_vis", "center"), "RandomFlip")
    out = dict(element)
    out.setdefault("flipped", False)
    out.setdefault("flip_pending", False)
    if not rng.random() <= self.prob:
      return out
    width = element["image"].shape[1]
    out["joints"], out["joints_vis"] = geometry.flip_joints(
        element["joints"], element["joints_vis"], self.flip_pairs, width)
    out["center"] = geometry.flip_center_x(element["center"], width)
    out["flipped"] = not out["flipped"]
    if self.fold_into_affine:
      out["flip_pending"] = not out["flip_pending"]
    else:
      out["image"] = np.ascontiguousarray(element["image"][:, ::-1])
    return out


class HalfBody(grain.transforms.RandomMap):
  """Crops the upper or lower body (MM `TopDownHalfBodyTransform`, §3.3).

  Applies iff `Σ vis > num_joints_half_body` (strictly) and then `rand() < prob`; the upper
  half is preferred iff `randn() < 0.5` (standard normal, P≈0.69). The new box is the extent of
  the selected joints, aspect-fixed, ×1.5 (see geometry.half_body_center_scale). With
  `prob <= 0` it draws nothing (the reference's MPII pipeline has no such step).

  Reads joints, joints_vis, center, scale; writes center, scale.
  """

  def __init__(self, upper_body_ids: Sequence[int], input_wh: Sequence[int],
               num_joints_half_body: int = 8, prob: float = 0.3, padding: float = 1.5):
    self.upper_body_ids = tuple(int(i) for i in upper_body_ids)
    self.aspect_ratio = input_wh[0] / input_wh[1]
    self.num_joints_half_body = int(num_joints_half_body)
    self.prob = float(prob)
    self.padding = float(padding)

  def random_map(self, element: Element, rng: np.random.Generator) -> Element:
    _require(element, ("joints", "joints_vis", "center", "scale"), "HalfBody")
    if self.prob <= 0:
      return element
    if not (np.sum(element["joints_vis"]) > self.num_joints_half_body
            and rng.random() < self.prob):
      return element
    prefer_upper = rng.standard_normal() < 0.5
    box = geometry.half_body_center_scale(element["joints"], element["joints_vis"],
                                          self.upper_body_ids, prefer_upper,
                                          self.aspect_ratio, self.padding)
    if box is None:
      return element
    return dict(element, center=box[0], scale=box[1])


class RandomScaleRotation(grain.transforms.RandomMap):
  """Random zoom and rotation (MM `TopDownGetRandomScaleRotation`, §3.4).

  Draw order as the reference: `s *= clip(randn·sf + 1, 1 − sf, 1 + sf)`, then
  `r = clip(randn·rf, −2rf, 2rf)`, kept iff `rand() <= rot_prob` (else 0).

  Reads scale; writes scale, rotation.
  """

  def __init__(self, scale_factor: float = 0.5, rot_factor: float = 40.0,
               rot_prob: float = 0.6):
    self.scale_factor = float(scale_factor)
    self.rot_factor = float(rot_factor)
    self.rot_prob = float(rot_prob)

  def random_map(self, element: Element, rng: np.random.Generator) -> Element:
    _require(element, ("scale",), "RandomScaleRotation")
    sf, rf = self.scale_factor, self.rot_factor
    s_factor = np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf)
    r_factor = np.clip(rng.standard_normal() * rf, -rf * 2, rf * 2)
    rotation = float(r_factor) if rng.random() <= self.rot_prob else 0.0
    # numpy 1 (the reference's) multiplied a float32 array by a float64 scalar in float32; a
    # float64 scale (2020 MPII, MPII-TRB) stays float64.
    scale = geometry.ref_float(element["scale"])
    scale = scale * scale.dtype.type(s_factor)
    return dict(element, scale=scale, rotation=rotation)


class TopDownAffine(grain.transforms.Map):
  """Warps the full image to the input crop (MM `TopDownAffine`, use_udp=False, §2.2).

  `cv2.warpAffine(INTER_LINEAR)` with zero border in uint8 on the full image, matrix from
  `geometry.get_affine_transform(center, scale, rotation, input_wh)` (bit-equal to the
  reference's; float64 centre/scale are used as float64, as the 2020 MPII code); a pending
  flip is folded into the matrix. Joints with vis > 0 are mapped into
  the crop, the others are left as they are (their weight is 0).

  Reads image, center, scale, rotation, joints (optional), joints_vis, flip_pending;
  writes image (input H, W, 3 uint8), joints (crop pixels), flip_pending=False.
  """

  def __init__(self, input_wh: Sequence[int]):
    self.input_wh = (int(input_wh[0]), int(input_wh[1]))

  def map(self, element: Element) -> Element:
    _require(element, ("image", "center", "scale"), "TopDownAffine")
    img = element["image"]
    matrix = geometry.get_affine_transform(element["center"], element["scale"],
                                           float(element.get("rotation", 0.0)), self.input_wh)
    image_matrix = (geometry.fold_flip(matrix, img.shape[1]) if element.get("flip_pending")
                    else matrix)
    out = dict(element, flip_pending=False)
    out["image"] = cv2.warpAffine(img, image_matrix, self.input_wh, flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if "joints" in element:
      joints = np.asarray(element["joints"], np.float32)
      vis = np.asarray(element["joints_vis"]).reshape(-1)
      mapped = geometry.affine_points(joints, matrix).astype(np.float32)
      out["joints"] = np.where((vis > 0)[:, None], mapped, joints)
    return out


class GenerateTarget(grain.transforms.Map):
  """Gaussian targets and target weights (MM `TopDownGenerateTarget`, MSRA, §4.1).

  With `with_heatmaps=False` only the weights and the heatmap-space joints are produced, for
  targets built on the device with `heatmaps.encode_jnp` (saves 209 KB of IPC per instance).

  Reads joints (crop pixels), joints_vis; writes target (H_hm, W_hm, K) float32 (if
  with_heatmaps), target_weight (K,) float32, joints (K, 3) float32 heatmap-space x, y, weight.
  """

  def __init__(self, input_wh: Sequence[int], heatmap_wh: Sequence[int], sigma: float,
               with_heatmaps: bool = True):
    self.heatmap_wh = (int(heatmap_wh[0]), int(heatmap_wh[1]))
    self.stride = np.asarray(input_wh, np.float64) / np.asarray(heatmap_wh, np.float64)
    self.sigma = float(sigma)
    self.with_heatmaps = bool(with_heatmaps)
    heatmaps.gaussian_patch(self.sigma)   # validates sigma now, not in a worker

  def map(self, element: Element) -> Element:
    _require(element, ("joints", "joints_vis"), "GenerateTarget")
    joints = np.asarray(element["joints"], np.float32)[:, :2]
    args = (joints, element["joints_vis"], self.heatmap_wh, self.sigma, self.stride)
    if self.with_heatmaps:
      target, weight = heatmaps.encode(*args)
    else:
      target, weight = None, heatmaps.target_weight(*args)
    out = dict(element, target_weight=weight)
    out["joints"] = np.concatenate(
        [joints / self.stride.astype(np.float32), weight[:, None]], axis=1).astype(np.float32)
    if self.with_heatmaps:
      out["target"] = target
    return out
