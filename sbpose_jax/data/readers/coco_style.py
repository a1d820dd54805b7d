"""COCO-style annotation files -> `Records`: COCO, COCO-WholeBody, OCHuman, AIC, CrowdPose,
PoseTrack18.

One path that follows MMPose 0.x `TopDownCocoDataset._load_coco_keypoint_annotation_kernel` (GT
boxes) and `_load_coco_person_detection_results` (detector boxes); see
docs/reference.md §1.1-1.2.

Centres are the deterministic ones: the 2020 random centre shift of training (drawn once per
record) is applied later, from `bbox_xywh`, by `pipeline.shifted_records`.
"""
from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import numpy as np

from sbpose_jax import geometry
from sbpose_jax import keypoints
from sbpose_jax.data.readers.common import bad_field, float_list, get_field, load_json, str_array
from sbpose_jax.data.records import Records, concat

WHOLEBODY_FIELDS = (("keypoints", 17), ("foot_kpts", 6), ("face_kpts", 68),
                    ("lefthand_kpts", 21), ("righthand_kpts", 21))


def box_to_center_scale(bbox_xywh, input_size: Sequence[int], padding: float = 1.25):
  """Boxes (N, 4) -> centre, scale (N, 2) float32 as the 2020 readers computed them (§1.1).

  The crop of a person box wherever one is made (readers, predict), so that they agree.
  """
  box = np.asarray(bbox_xywh, np.float64).reshape(-1, 4)
  return geometry.box_to_center_scale(box, input_size[0] / input_size[1], padding,
                                      divide_in_float64=True)


def sanitise_gt_boxes(bbox_xywh, image_wh, area=None):
  """GT box clean-up of MMPose 0.x COCO readers: clip to the image, keep non-empty boxes.

  2020 behaviour that produced the published checkpoints (docs/reference.md §0):
  `x2 = min(W-1, x1 + max(0, w-1))`, i.e. the clean box is 1 px narrower than the raw one
  (MMPose >= 0.27 uses `w` instead of `w-1`).
  Args:
    bbox_xywh: (M, 4) raw boxes; image_wh: (M, 2) image sizes; area: (M,) or None (no area field).
  Returns:
    clean (M, 4) float64 boxes and keep (M,) bool.
    area: (M,) annotation areas, NaN where the field is absent (then only the box is checked).
  """
  box = np.asarray(bbox_xywh, np.float64)
  wh = np.asarray(image_wh, np.float64)
  x1 = np.maximum(0, box[:, 0])
  y1 = np.maximum(0, box[:, 1])
  x2 = np.minimum(wh[:, 0] - 1, x1 + np.maximum(0, box[:, 2] - 1))
  y2 = np.minimum(wh[:, 1] - 1, y1 + np.maximum(0, box[:, 3] - 1))
  keep = (x2 > x1) & (y2 > y1)
  if area is not None:
    keep &= ~(np.asarray(area, np.float64) <= 0)  # NaN (no area field) is kept
  return np.stack([x1, y1, x2 - x1, y2 - y1], -1), keep


# -------------------------------------------------------------------------- COCO-style files
def _image_table(data: dict, path, dataset: str) -> dict:
  images = get_field(data, "images", list, path)
  ids, files, wh = [], [], []
  for j, im in enumerate(images):
    where = f"images[{j}]"
    ids.append(get_field(im, "id", int, path, where))
    files.append(get_field(im, "file_name", str, path, where))
    wh.append([get_field(im, k, (int, float), path, where) for k in ("width", "height")])
  ids = np.asarray(ids, np.int64)
  id_to_row = {int(i): r for r, i in enumerate(ids)}
  if len(id_to_row) != len(ids):
    raise bad_field(path, "images", "has duplicate image ids")
  image_extra = _IMAGE_EXTRA.get(dataset, lambda images: {})(images)
  return dict(image_files=str_array(files),
              image_ids=ids, image_wh=np.asarray(wh, np.int32).reshape(-1, 2),
              id_to_row=id_to_row, image_extra=image_extra)


def _keypoints_of(ann: dict, dataset: str, num_joints: int, path, where: str) -> list:
  if dataset != "coco_wholebody":
    return float_list(ann, "keypoints", 3 * num_joints, path, where)
  out = []
  for key, k in WHOLEBODY_FIELDS:
    out += float_list(ann, key, 3 * k, path, where)
  return out


def _gt_instances(data: dict, path, dataset: str, table: dict, area_from_box: bool):
  """Non-crowd annotations with a box and keypoints, validated, as raw arrays + the dicts."""
  anns = get_field(data, "annotations", list, path)
  num_joints = keypoints.get(dataset).num_joints
  rows, boxes, kpts, areas, kept = [], [], [], [], []
  for j, ann in enumerate(anns):
    where = f"annotations[{j}]"
    if not isinstance(ann, dict):
      raise bad_field(path, where, "must be an object")
    if ann.get("iscrowd", 0) or "bbox" not in ann or "keypoints" not in ann:
      continue  # the reference asks pycocotools for iscrowd=False and skips these
    image_id = get_field(ann, "image_id", int, path, where)
    if image_id not in table["id_to_row"]:
      raise bad_field(path, f"{where}.image_id", f"= {image_id} is not in 'images'")
    box = float_list(ann, "bbox", 4, path, where)
    kpts.append(_keypoints_of(ann, dataset, num_joints, path, where))
    rows.append(table["id_to_row"][image_id])
    boxes.append(box)
    areas.append(ann.get("area", np.nan))  # NaN: no area field, which passes the area>0 check
    kept.append(ann)
  try:
    kpts = np.asarray(kpts, np.float64).reshape(-1, num_joints, 3)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    areas = np.asarray(areas, np.float64)
  except (TypeError, ValueError) as e:
    raise bad_field(path, "annotations", f"holds a non-numeric bbox/keypoints/area ({e})") from None
  if area_from_box:  # AIC/CrowdPose metrics use 0.53*w*h of the raw GT box (use_area=False)
    stored_area = 0.53 * boxes[:, 2] * boxes[:, 3]
  else:
    stored_area = np.nan_to_num(areas, nan=0.0)
  return dict(rows=np.asarray(rows, np.int64), boxes=boxes, kpts=kpts, areas=areas,
              stored_area=stored_area, anns=kept)


def read_coco_style_gt(dataset: str, ann_file, image_root, *, input_size=(192, 256),
                       padding=1.25, area_from_box=False) -> Records:
  """GT-box records of one COCO-style annotation file (the training/GT-box-test path)."""
  path = pathlib.Path(ann_file)
  data = load_json(path)
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a COCO-style JSON object with 'images' and "
                     f"'annotations', got a {type(data).__name__}")
  table = _image_table(data, path, dataset)
  inst = _gt_instances(data, path, dataset, table, area_from_box)
  clean, keep = sanitise_gt_boxes(inst["boxes"], table["image_wh"][inst["rows"]], inst["areas"])
  kpts = inst["kpts"]
  # Filters of the reference: `max(keypoints) == 0` (over the body list: x, y and v), and
  # num_keypoints == 0. The 2020 WholeBody reader checked only the former.
  keep &= kpts[:, :17].max(axis=(1, 2)) != 0
  if dataset != "coco_wholebody":
    keep &= np.asarray([a.get("num_keypoints", 1) != 0 for a in inst["anns"]], bool)
  # The reference iterates images in file order, then each image's annotations in file order.
  order = np.flatnonzero(keep)
  order = order[np.argsort(inst["rows"][order], kind="stable")]
  kpts = kpts[order]
  if dataset == "coco_wholebody":
    vis = kpts[..., 2] > 0
  else:
    vis = np.minimum(1, kpts[..., 2])   # COCO v=1 (occluded, labelled) and v=2 both count
  center, scale = box_to_center_scale(clean[order], input_size, padding)
  anns = [inst["anns"][i] for i in order]
  extra = _ANN_EXTRA.get(dataset, lambda anns, rows, table: {})(anns, inst["rows"][order], table)
  return Records(
      dataset=dataset, image_root=str(image_root), image_files=table["image_files"],
      image_ids=table["image_ids"], image_wh=table["image_wh"],
      image_index=inst["rows"][order], bbox_xywh=clean[order], center_xy=center,
      scale_wh=scale, joints_xy=kpts[..., :2], joints_vis=vis,
      bbox_score=np.ones(len(order)), area=inst["stored_area"][order],
      ann_ids=np.asarray([a.get("id", -1) for a in anns], np.int64), extra=extra,
      image_extra=table["image_extra"])


def read_detections(gt: Records, det_file, *, input_size=(192, 256), padding=1.25,
                    det_score_thr: float = 0.0) -> Records:
  """Detector boxes of a COCO results file, on the image tables of the GT records `gt`.

  Keeps `category_id == 1` and `score >= det_score_thr`, in file order; boxes are used as is (no
  sanitising, no -1); bbox_score = score, ann_ids = -1, no GT joints (docs/reference.md §1.2).
  """
  path = pathlib.Path(det_file)
  dets = load_json(path, "detection results file")
  if not isinstance(dets, list):
    raise ValueError(f"{path}: expected a JSON list of detections, got {type(dets).__name__}")
  id_to_row = {int(i): r for r, i in enumerate(gt.image_ids)}
  rows, boxes, scores = [], [], []
  for j, d in enumerate(dets):
    where = f"[{j}]"
    if get_field(d, "category_id", int, path, where) != 1:
      continue
    score = get_field(d, "score", (int, float), path, where)
    if score < det_score_thr:
      continue
    image_id = get_field(d, "image_id", int, path, where)
    if image_id not in id_to_row:
      raise bad_field(path, f"{where}.image_id", f"= {image_id} is not an image of the GT file")
    rows.append(id_to_row[image_id])
    boxes.append(float_list(d, "bbox", 4, path, where))
    scores.append(score)
  n, k = len(rows), gt.num_joints
  rows = np.asarray(rows, np.int32)
  boxes = np.asarray(boxes, np.float64).reshape(n, 4)
  center, scale = box_to_center_scale(boxes, input_size, padding)
  extra = {}
  for key, value in gt.extra.items():
    if key in gt.image_extra:
      extra[key] = gt.image_extra[key][rows]
    else:
      extra[key] = np.full((n,) + value.shape[1:], _DET_FILL.get(key, 0), value.dtype)
  return Records(
      dataset=gt.dataset, image_root=gt.image_root, image_files=gt.image_files,
      image_ids=gt.image_ids, image_wh=gt.image_wh, image_index=rows, bbox_xywh=boxes,
      center_xy=center, scale_wh=scale, joints_xy=np.zeros((n, k, 2)),
      joints_vis=np.zeros((n, k)), bbox_score=np.asarray(scores, np.float64),
      area=np.zeros(n), ann_ids=np.full(n, -1), extra=extra, image_extra=gt.image_extra)


def _crowdpose_image_extra(images: list) -> dict:
  return {"crowd_index": np.asarray([im.get("crowdIndex", np.nan) for im in images], np.float32)}


def _posetrack_image_extra(images: list) -> dict:
  return {
      "frame_id": np.asarray([im.get("frame_id", im["id"]) for im in images], np.int64),
      "vid_id": str_array([str(im.get("vid_id", "")) for im in images]),
      "nframes": np.asarray([im.get("nframes", 0) for im in images], np.int32),
      "sequence": str_array([pathlib.PurePosixPath(im["file_name"]).parent.name
                             for im in images])}


def _crowdpose_ann_extra(anns, rows, table) -> dict:
  return {"crowd_index": table["image_extra"]["crowd_index"][rows]}


def _posetrack_ann_extra(anns, rows, table) -> dict:
  return {"track_id": np.asarray([a.get("track_id", -1) for a in anns], np.int64),
          "bbox_head": np.asarray([a.get("bbox_head", (0, 0, 0, 0)) for a in anns],
                                  np.float32).reshape(-1, 4)}


_IMAGE_EXTRA: dict[str, Callable] = {"crowdpose": _crowdpose_image_extra,
                                     "posetrack18": _posetrack_image_extra}
_ANN_EXTRA: dict[str, Callable] = {"crowdpose": _crowdpose_ann_extra,
                                   "posetrack18": _posetrack_ann_extra}
_DET_FILL = {"track_id": -1}


# ------------------------------------------------------------------------- public readers
def _read_coco_style(dataset, ann_file, image_root, *, input_size, padding, det_file,
                     det_score_thr, use_gt_bbox, area_from_box=False) -> Records:
  files = _posetrack_files(ann_file) if dataset == "posetrack18" else [ann_file]
  gt = concat(read_coco_style_gt(dataset, f, image_root, input_size=input_size, padding=padding,
                                 area_from_box=area_from_box) for f in files)
  if use_gt_bbox:
    return gt
  if det_file is None:
    raise ValueError(f"{dataset}: use_gt_bbox=False needs a det_file")
  return read_detections(gt, det_file, input_size=input_size, padding=padding,
                         det_score_thr=det_score_thr)


def _posetrack_files(ann_file) -> list:
  path = pathlib.Path(ann_file)
  if path.is_dir():  # a folder of per-video files (annotations/val/*.json)
    files = sorted(path.glob("*.json"))
    if not files:
      raise FileNotFoundError(f"no per-video PoseTrack18 .json files in {path}")
    return files
  return [path]


def read_coco(ann_file, image_root, *, input_size=(192, 256), padding=1.25, det_file=None,
              det_score_thr=0.0, use_gt_bbox=True, dataset="coco") -> Records:
  """COCO person keypoints (17). `dataset` lets COCO-format files of other datasets reuse it."""
  return _read_coco_style(dataset, ann_file, image_root, input_size=input_size, padding=padding,
                          det_file=det_file, det_score_thr=det_score_thr, use_gt_bbox=use_gt_bbox)


def read_coco_wholebody(ann_file, image_root, **kw) -> Records:
  """COCO-WholeBody (133 = body 17 + foot 6 + face 68 + left hand 21 + right hand 21); vis=(v>0)."""
  return read_coco(ann_file, image_root, **kw, dataset="coco_wholebody")


def read_ochuman(ann_file, image_root, **kw) -> Records:
  """OCHuman (COCO-style json, 17 COCO joints; evaluated with GT boxes)."""
  return read_coco(ann_file, image_root, **kw, dataset="ochuman")


def read_posetrack18(ann_file, image_root, **kw) -> Records:
  """PoseTrack18: the merged json, or a folder of per-video jsons (concatenated, sorted by name).

  Frame/video ids go to image_extra and track ids / head boxes to extra; ignore regions are left
  to the evaluator, which reads them from the GT files.
  """
  return read_coco(ann_file, image_root, **kw, dataset="posetrack18")


def read_aic(ann_file, image_root, *, input_size=(192, 256), padding=1.25, det_file=None,
             det_score_thr=0.0, use_gt_bbox=True) -> Records:
  """AI Challenger (14); area = 0.53*w*h of the raw box, as its metric uses (use_area=False)."""
  return _read_coco_style("aic", ann_file, image_root, input_size=input_size, padding=padding,
                          det_file=det_file, det_score_thr=det_score_thr,
                          use_gt_bbox=use_gt_bbox, area_from_box=True)


def read_crowdpose(ann_file, image_root, *, input_size=(192, 256), padding=1.25, det_file=None,
                   det_score_thr=0.0, use_gt_bbox=True) -> Records:
  """CrowdPose (14); crowdIndex per image; area = 0.53*w*h of the raw box (use_area=False)."""
  return _read_coco_style("crowdpose", ann_file, image_root, input_size=input_size,
                          padding=padding, det_file=det_file, det_score_thr=det_score_thr,
                          use_gt_bbox=use_gt_bbox, area_from_box=True)
