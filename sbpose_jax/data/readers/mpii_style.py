"""MPII and MPII-TRB annotation files (their own json layouts) -> `Records`.

Both datasets ship a centre and a scale per person instead of a box, so `bbox_xywh` is zeros.
"""
from __future__ import annotations

import pathlib

import numpy as np

from sbpose_jax import geometry
from sbpose_jax import keypoints
from sbpose_jax.data.readers.common import bad_field, float_list, get_field, load_json, str_array
from sbpose_jax.data.records import Records


def _no_detections(dataset: str, det_file, use_gt_bbox: bool) -> None:
  if det_file is not None or not use_gt_bbox:
    raise ValueError(f"{dataset} is evaluated on its annotated centre/scale; detector boxes "
                     "(det_file, use_gt_bbox=False) are not supported")


def _image_ids_from_names(names: list) -> np.ndarray:
  """MPII image ids: the numeric file stem (005808361.jpg -> 5808361), else the row."""
  stems = [pathlib.PurePath(n).stem for n in names]
  if all(s.isdigit() for s in stems):
    return np.asarray([int(s) for s in stems], np.int64)
  return np.arange(len(names), dtype=np.int64)


def read_mpii(ann_file, image_root, *, input_size=(256, 256), padding=1.25, gt_mat_file=None,
              det_file=None, det_score_thr=0.0, use_gt_bbox=True) -> Records:
  """MMPose's MPII json (a list of {image, center, scale, joints, joints_vis}), in file order.

  docs/reference.md §1.3 (MM 0.x `TopDownMpiiDataset._get_db`, MS `mpii.py`): if c_x != -1,
  c_y += 15 * s and s *= padding; then c -= 1 and joints -= 1 (MATLAB 1-based -> 0-based);
  scale = (s, s) (square; input_size is unused). joints_vis is the target weight. Centre and
  scale stay float64, as the 2020 MPII reader kept them (`np.float`); crops depend on it.
  Predictions must get +1 again before PCKh, which takes GT and head boxes from
  `mpii_gt_val.mat`: pass `gt_mat_file` to attach them as extra 'headbox', 'jnt_missing' and
  'pos_gt_src' (rows must match the json order, as in the reference).
  """
  del input_size, det_score_thr
  _no_detections("mpii", det_file, use_gt_bbox)
  path = pathlib.Path(ann_file)
  data = load_json(path)
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected MMPose's MPII json (a list of instances), got a "
                     f"{type(data).__name__}")
  num_joints = keypoints.get("mpii").num_joints
  names, centers, scales, joints, vis = [], [], [], [], []
  for j, a in enumerate(data):
    where = f"[{j}]"
    names.append(get_field(a, "image", str, path, where))
    centers.append(float_list(a, "center", 2, path, where))
    scales.append(get_field(a, "scale", (int, float), path, where))
    joints.append(float_list(a, "joints", num_joints, path, where))
    vis.append(float_list(a, "joints_vis", num_joints, path, where))
  try:
    joints = np.asarray(joints, np.float64).reshape(len(data), num_joints, 2)
  except ValueError:
    raise bad_field(path, "joints", f"must hold {num_joints} [x, y] pairs per instance") from None
  center = np.asarray(centers, np.float64).reshape(-1, 2)
  s = np.asarray(scales, np.float64)
  has_center = center[:, 0] != -1
  center[:, 1] += np.where(has_center, 15 * s, 0)   # move down 15 px per 200 px of person
  s = np.where(has_center, s * padding, s)
  unique, image_index = np.unique(str_array(names), return_inverse=True)
  extra = read_mpii_gt_mat(gt_mat_file, len(data)) if gt_mat_file is not None else {}
  n = len(data)
  return Records(
      dataset="mpii", image_root=str(image_root), image_files=unique,
      image_ids=_image_ids_from_names(list(unique)), image_wh=np.zeros((len(unique), 2)),
      image_index=image_index, bbox_xywh=np.zeros((n, 4)), center_xy=center - 1,
      scale_wh=np.stack([s, s], -1), joints_xy=joints - 1,
      joints_vis=np.asarray(vis, np.float64).reshape(n, num_joints),
      bbox_score=np.ones(n), area=np.zeros(n), ann_ids=np.arange(n), extra=extra)


def read_mpii_gt_mat(mat_file, num_instances: int | None = None) -> dict:
  """`mpii_gt_val.mat` (the official PCKh ground truth) -> per-instance arrays, MATLAB 1-based.

  Returns dict(headbox (N, 4) float32 x1 y1 x2 y2, jnt_missing (N, 16) bool,
  pos_gt_src (N, 16, 2) float32), from the .mat's headboxes_src (2, 2, N), jnt_missing (16, N)
  and pos_gt_src (16, 2, N).
  """
  import scipy.io  # why: scipy (~0.3 s to import) serves only this MPII .mat file
  path = pathlib.Path(mat_file)
  if not path.is_file():
    raise FileNotFoundError(f"MPII GT .mat file not found: {path}")
  try:
    mat = scipy.io.loadmat(str(path))
  except Exception as e:  # scipy raises several types for a corrupt file
    raise ValueError(f"{path}: not a readable .mat file ({e})") from None
  for key in ("headboxes_src", "jnt_missing", "pos_gt_src"):
    if key not in mat:
      raise bad_field(path, key, "is missing")
  heads, missing, pos = mat["headboxes_src"], mat["jnt_missing"], mat["pos_gt_src"]
  n = heads.shape[-1]
  if heads.shape != (2, 2, n) or missing.shape != (16, n) or pos.shape != (16, 2, n):
    raise bad_field(path, "headboxes_src/jnt_missing/pos_gt_src",
                    f"have shapes {heads.shape}/{missing.shape}/{pos.shape}, expected "
                    f"(2, 2, N)/(16, N)/(16, 2, N)")
  if num_instances is not None and n != num_instances:
    raise bad_field(path, "headboxes_src", f"has {n} instances but the json has {num_instances}")
  return {"headbox": np.concatenate([heads[0].T, heads[1].T], -1).astype(np.float32),
          "jnt_missing": missing.T.astype(bool),
          "pos_gt_src": pos.transpose(2, 0, 1).astype(np.float32)}


def read_mpii_trb(ann_file, image_root, *, input_size=(256, 256), padding=None, det_file=None,
                  det_score_thr=0.0, use_gt_bbox=True) -> Records:
  """MPII-TRB (40 joints), docs/reference.md §1.4 (MM 0.x `TopDownMpiiTrbDataset._get_db`).

  centre = json `center` as is (no -1, no +15); scale = input_size / json scale / 200 (a
  2-vector, float64 as the 2020 reader; the centre is float32) with **no** 1.25 padding (the
  TRB pipeline never pads; `padding` is ignored); vis = min(v, 1); instances with
  max(keypoints) == 0 dropped; sorted by annotation id, the order the TRB metric pairs
  predictions with GT. The json `headbox` (x1 y1 x2 y2, needed by the
  metric) goes to extra['headbox'] (NaN where absent).
  """
  del padding, det_score_thr
  _no_detections("mpii_trb", det_file, use_gt_bbox)
  path = pathlib.Path(ann_file)
  data = load_json(path)
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object with 'images' and 'annotations'")
  images = get_field(data, "images", list, path)
  ids = [get_field(im, "id", int, path, f"images[{j}]") for j, im in enumerate(images)]
  files = [get_field(im, "file_name", str, path, f"images[{j}]") for j, im in enumerate(images)]
  wh = [(im.get("width", 0), im.get("height", 0)) for im in images]
  id_to_row = {i: r for r, i in enumerate(ids)}
  num_joints = keypoints.get("mpii_trb").num_joints
  rows, kpts, centers, scales, ann_ids, heads = [], [], [], [], [], []
  for j, a in enumerate(get_field(data, "annotations", list, path)):
    where = f"annotations[{j}]"
    kp = float_list(a, "keypoints", 3 * num_joints, path, where)
    image_id = get_field(a, "image_id", int, path, where)
    if image_id not in id_to_row:
      raise bad_field(path, f"{where}.image_id", f"= {image_id} is not in 'images'")
    if max(kp) == 0:
      continue
    rows.append(id_to_row[image_id])
    kpts.append(kp)
    centers.append(float_list(a, "center", 2, path, where))
    scales.append(get_field(a, "scale", (int, float), path, where))
    ann_ids.append(get_field(a, "id", int, path, where))
    heads.append(float_list(a, "headbox", 4, path, where) if "headbox" in a else [np.nan] * 4)
  order = np.argsort(np.asarray(ann_ids, np.int64), kind="stable")
  n = len(order)
  kpts = np.asarray(kpts, np.float64).reshape(-1, num_joints, 3)[order]
  size = np.asarray(input_size, np.float64)
  scale = size[None, :] / np.asarray(scales, np.float64).reshape(-1, 1)[order] / geometry.PIXEL_STD
  extra = {"headbox": np.asarray(heads, np.float32).reshape(-1, 4)[order]}
  return Records(
      dataset="mpii_trb", image_root=str(image_root), image_files=str_array(files),
      image_ids=np.asarray(ids, np.int64), image_wh=np.asarray(wh).reshape(-1, 2),
      image_index=np.asarray(rows, np.int64)[order], bbox_xywh=np.zeros((n, 4)),
      center_xy=np.asarray(centers, np.float32).reshape(-1, 2)[order], scale_wh=scale,
      joints_xy=kpts[..., :2], joints_vis=np.minimum(kpts[..., 2], 1), bbox_score=np.ones(n),
      area=np.zeros(n), ann_ids=np.asarray(ann_ids, np.int64)[order], extra=extra)
