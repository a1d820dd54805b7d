"""Procedural people in the COCO person-keypoints format: the dataset that needs no download.

`generate(out_dir, {"train": 1000, "val": 200}, seed=0)` writes

  out_dir/train/000000000001.jpg ...            the images
  out_dir/val/...
  out_dir/annotations/person_keypoints_train.json   COCO keypoints json (17 COCO joints)
  out_dir/annotations/person_keypoints_val.json
  out_dir/annotations/person_detections_val.json    GT boxes jittered, with scores (a fake detector)
  out_dir/synthetic.json                            the generation parameters

Each image holds 1-4 front-facing stick people (limbs as thick segments, torso polygon, head with
eyes, nose and ears, hands and shoes as blobs) of varied size, posture and rotation, over a
cluttered background (gradients, noise, random shapes and limb-like sticks). Later people and
occluder rectangles hide earlier ones: a joint hidden by something else gets v=1 (labelled but
occluded, as in COCO), a joint outside the frame gets v=0 with (0, 0). Everyone faces the camera,
so "the person's left is the image right of the torso" holds for every person and for its mirror
image: horizontal-flip augmentation stays label-consistent. Left limbs are drawn a shade darker
than right ones (an extra cue on unflipped images).

`area` is 0.53 * w * h of the box (the convention of datasets without segmentation, e.g. AIC and
CrowdPose): stick limbs cover less of the box than real bodies, so the mask area would make OKS
stricter than on real people. `segmentation` is [].

Everything is a function of (seed, split, image index): same arguments -> byte-identical files
with one OpenCV build (another libjpeg may encode the same pixels to other bytes; the
annotations do not depend on the encoder). Each image has its own generator, so a split can be
made in parallel or extended without changing the images already made.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
import zlib
from typing import Callable, Mapping

import cv2
import numpy as np

from sbpose_jax import keypoints

_INFO = keypoints.COCO
OCCLUDER = 255  # owner-map value of occluder rectangles; person p is p + 1
_JPEG_QUALITY = 90
_SUBPIXEL_BITS = 4
_SUBPIXEL = 1 << _SUBPIXEL_BITS
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------
# Pose: joints of one person in image pixels.

def _unit(angle_deg: float) -> np.ndarray:
  """Direction at `angle_deg` from 'down' towards the person's left (+x in the person frame)."""
  a = np.deg2rad(angle_deg)
  return np.array([np.sin(a), np.cos(a)])


def _limb(start, abduct_deg, bend_deg, len1, len2, side):
  """Two-segment limb from `start` (person frame, x = person's left, y = down)."""
  d1 = _unit(abduct_deg) * np.array([side, 1.0])
  mid = start + len1 * d1
  d2 = _unit(abduct_deg + bend_deg) * np.array([side, 1.0])
  return mid, mid + len2 * d2


def sample_pose(rng: np.random.Generator, height: float, pelvis_xy, tilt_deg: float):
  """Samples one front-facing person.

  Args:
    rng: the random generator.
    height: approximate head-top-to-ankle height in pixels.
    pelvis_xy: (2,) pelvis position in the image.
    tilt_deg: rotation of the whole body (positive = clockwise on screen).

  Returns:
    joints: (17, 2) float64 image xy in COCO order; u: the body unit (height / 7.5) in pixels.
  """
  u = height / 7.5
  j = np.zeros((17, 2))
  neck = np.array([rng.uniform(-0.15, 0.15) * u, -2.6 * u])
  sho, hip = rng.uniform(0.85, 1.1) * u, rng.uniform(0.5, 0.65) * u
  j[5], j[6] = neck + [sho, 0.1 * u], neck + [-sho, 0.1 * u]
  j[11], j[12] = [hip, 0.0], [-hip, 0.0]
  head = neck + _unit(180 + rng.normal(0, 10)) * 0.95 * u
  side = np.array([1.0, 0.0])
  j[0] = head + [0, 0.15 * u]
  j[1], j[2] = head + 0.24 * u * side - [0, 0.1 * u], head - 0.24 * u * side - [0, 0.1 * u]
  j[3], j[4] = head + 0.55 * u * side, head - 0.55 * u * side
  for s, (sh, el, wr) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):
    abduct = rng.uniform(-10, 165) if rng.random() < 0.8 else rng.uniform(-35, 10)
    bend = rng.choice([-1, 1]) * rng.uniform(0, 140)
    fore = rng.uniform(0.7, 1.0)
    j[el], j[wr] = _limb(j[sh], abduct, bend, 1.35 * u * fore, 1.2 * u * fore, s)
  for s, (hp, kn, an) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
    abduct = rng.uniform(-8, 35) if rng.random() < 0.85 else rng.uniform(35, 100)
    bend = rng.uniform(-35, 35)
    fore = rng.uniform(0.75, 1.0)
    j[kn], j[an] = _limb(j[hp], abduct, bend, 1.85 * u * fore, 1.75 * u * fore, s)
  t = np.deg2rad(tilt_deg)
  rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
  return j @ rot.T + np.asarray(pelvis_xy, np.float64), u


# ------------------------------------------------------------------------------------------------
# Drawing: colour image and owner map with the same primitives.

def _fixed(p) -> tuple[int, int]:
  return int(round(p[0] * _SUBPIXEL)), int(round(p[1] * _SUBPIXEL))


class Canvas:
  """A BGR image plus an owner map (0 background, p+1 person p, 255 occluder)."""

  def __init__(self, image: np.ndarray):
    self.image = image
    self.owner = np.zeros(image.shape[:2], np.uint8)

  def line(self, a, b, colour, width, owner):
    w = max(1, int(round(width)))
    cv2.line(self.image, _fixed(a), _fixed(b), colour, w, cv2.LINE_AA, _SUBPIXEL_BITS)
    cv2.line(self.owner, _fixed(a), _fixed(b), owner, w, cv2.LINE_8, _SUBPIXEL_BITS)

  def circle(self, c, radius, colour, owner):
    r = max(1, int(round(radius * _SUBPIXEL)))
    cv2.circle(self.image, _fixed(c), r, colour, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
    cv2.circle(self.owner, _fixed(c), r, owner, -1, cv2.LINE_8, _SUBPIXEL_BITS)

  def polygon(self, points, colour, owner):
    pts = np.array([_fixed(p) for p in points], np.int32)
    cv2.fillPoly(self.image, [pts], colour, cv2.LINE_AA, _SUBPIXEL_BITS)
    cv2.fillPoly(self.owner, [pts], owner, cv2.LINE_8, _SUBPIXEL_BITS)


def _colour(rng, lo=30, hi=230) -> np.ndarray:
  return rng.integers(lo, hi, 3).astype(np.float64)


def _tuple(c) -> tuple[float, float, float]:
  return tuple(float(np.clip(v, 0, 255)) for v in c)


_SKIN = np.array([[60, 90, 140], [90, 130, 190], [120, 170, 225], [40, 60, 95], [150, 190, 235]],
                 np.float64)


def sample_colours(rng) -> dict[str, np.ndarray]:
  """One person's look: shirt, pants, skin, shoe, hair, each a (3,) float BGR colour."""
  shirt, pants = _colour(rng), _colour(rng)
  skin = _SKIN[rng.integers(len(_SKIN))] + rng.uniform(-15, 15, 3)
  shoe = _colour(rng, 0, 70)
  hair = _colour(rng, 0, 120)
  return {"shirt": shirt, "pants": pants, "skin": skin, "shoe": shoe, "hair": hair}


def draw_person(canvas: Canvas, rng, joints: np.ndarray, u: float, owner: int) -> None:
  """Draws one person (legs, torso, arms, head, in that order) onto `canvas`, in colours drawn
  from `rng`."""
  draw_body(canvas, joints, u, owner, sample_colours(rng))


def draw_body(canvas: Canvas, joints: np.ndarray, u: float, owner: int,
              colours: dict[str, np.ndarray], left_first: bool = True) -> None:
  """Draws one person of `colours` (see `sample_colours`) onto `canvas`.

  Args:
    canvas: the image and owner map drawn into.
    joints: (17, 2) image xy in COCO order; u: the body unit in pixels (height / 7.5).
    owner: the owner-map value of this person.
    colours: the person's look.
    left_first: draw the left legs and arms before the right ones (the left side further from
      the camera; False for a person turned to show the left side).
  """
  shirt, pants, skin, shoe = (colours[k] for k in ("shirt", "pants", "skin", "shoe"))
  dark = 0.72  # left limbs darker
  legs = (((11, 13, 15), dark), ((12, 14, 16), 1.0))
  arms = (((5, 7, 9), dark), ((6, 8, 10), 1.0))
  if not left_first:
    legs, arms = legs[::-1], arms[::-1]
  for (hp, kn, an), shade in legs:
    c = _tuple(pants * shade)
    canvas.line(joints[hp], joints[kn], c, 0.62 * u, owner)
    canvas.line(joints[kn], joints[an], c, 0.5 * u, owner)
    canvas.circle(joints[kn], 0.3 * u, _tuple(pants * shade * 0.8), owner)
    canvas.circle(joints[an], 0.3 * u, _tuple(shoe), owner)
  torso = [joints[5], joints[6], joints[12], joints[11]]
  canvas.polygon(torso, _tuple(shirt), owner)
  neck = (joints[5] + joints[6]) / 2
  canvas.line(neck, (joints[3] + joints[4]) / 2, _tuple(skin * 0.9), 0.35 * u, owner)
  for (sh, el, wr), shade in arms:
    c = _tuple(shirt * shade * 0.92)
    canvas.circle(joints[sh], 0.3 * u, c, owner)
    canvas.line(joints[sh], joints[el], c, 0.42 * u, owner)
    canvas.line(joints[el], joints[wr], _tuple(skin * shade), 0.34 * u, owner)
    canvas.circle(joints[el], 0.24 * u, _tuple(shirt * shade * 0.7), owner)
    canvas.circle(joints[wr], 0.26 * u, _tuple(skin * shade * 1.1), owner)
  head = (joints[3] + joints[4]) / 2
  canvas.circle(joints[3], 0.14 * u, _tuple(skin * 0.8), owner)
  canvas.circle(joints[4], 0.14 * u, _tuple(skin * 0.8), owner)
  canvas.circle(head, 0.5 * u, _tuple(skin), owner)
  top = head + (head - joints[0]) * 0.9
  canvas.circle(top, 0.3 * u, _tuple(colours["hair"]), owner)
  for e in (1, 2):
    canvas.circle(joints[e], 0.07 * u, (20.0, 20.0, 20.0), owner)
  canvas.circle(joints[0], 0.08 * u, _tuple(skin * 0.6 + [0, 0, 60]), owner)


def background(rng, width: int, height: int) -> np.ndarray:
  """Gradient + low-frequency noise + random shapes and limb-like sticks (clutter)."""
  a, b = _colour(rng, 0, 255), _colour(rng, 0, 255)
  t = np.linspace(0, 1, height)[:, None, None] if rng.random() < 0.5 else \
      np.linspace(0, 1, width)[None, :, None]
  img = a * (1 - t) + b * t + np.zeros((height, width, 1))
  noise = rng.normal(0, 18, (height // 16 + 2, width // 16 + 2, 3))
  img += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
  img = np.clip(img, 0, 255).astype(np.uint8)
  size = min(width, height)
  for _ in range(rng.integers(4, 12)):
    c, p = _tuple(_colour(rng, 0, 255)), rng.uniform(0, 1, 2) * [width, height]
    kind = rng.integers(4)
    if kind == 0:
      q = p + rng.uniform(-0.3, 0.3, 2) * size
      cv2.rectangle(img, _fixed(p), _fixed(q), c, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
    elif kind == 1:
      r = int(rng.uniform(0.02, 0.12) * size * _SUBPIXEL)
      cv2.circle(img, _fixed(p), r, c, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
    else:  # sticks about as thick as limbs: distractors
      q = p + rng.uniform(-0.35, 0.35, 2) * size
      w = max(1, int(rng.uniform(0.01, 0.05) * size))
      cv2.line(img, _fixed(p), _fixed(q), c, w, cv2.LINE_AA, _SUBPIXEL_BITS)
  return img


# ------------------------------------------------------------------------------------------------
# One image: people, occluders, annotations.

def _sample_people(rng, width, height):
  """Yields (joints, u) for 1-4 people, with painter order = list order."""
  n = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.2, 0.15]))
  people = []
  for _ in range(n):
    h = rng.uniform(0.45, 1.0) * height
    tilt = rng.normal(0, 12) if rng.random() < 0.9 else rng.uniform(-100, 100)
    margin = 0.05 if rng.random() < 0.75 else -0.15  # a quarter may leave the frame
    px = rng.uniform(margin, 1 - margin) * width
    py = rng.uniform(0.5 * h - 0.05 * height, height - 0.45 * h + 0.1 * height)
    if margin < 0:
      py += rng.uniform(-0.2, 0.2) * height
    people.append(sample_pose(rng, h, (px, py), tilt))
  return people


def _occluders(canvas: Canvas, rng, width, height):
  for _ in range(rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15])):
    wh = rng.uniform(0.08, 0.3, 2) * [width, height]
    p = rng.uniform(0, 1, 2) * [width, height]
    pts = [p, p + [wh[0], 0], p + wh, p + [0, wh[1]]]
    canvas.polygon(pts, _tuple(_colour(rng, 0, 255)), OCCLUDER)


def annotate_joints(canvas: Canvas, joints, person: int, width: int, height: int):
  """(17, 3) COCO keypoints of one person from its (17, 2) image xy: v = 2 where the final owner
  map shows `person`, 1 where something else covers it, (0, 0, 0) outside the image."""
  kpts = np.zeros((17, 3))
  inside = ((joints[:, 0] >= 0) & (joints[:, 0] <= width - 1) &
            (joints[:, 1] >= 0) & (joints[:, 1] <= height - 1))
  for k in np.nonzero(inside)[0]:
    x, y = joints[k]
    seen = canvas.owner[int(round(y)), int(round(x))] == person
    kpts[k] = (round(float(x), 2), round(float(y), 2), 2 if seen else 1)
  return kpts


def render_image(rng: np.random.Generator, width: int, height: int):
  """Renders one image. Returns (BGR uint8 (H, W, 3), list of (keypoints (17, 3), bbox xywh))."""
  canvas = Canvas(background(rng, width, height))
  people = _sample_people(rng, width, height)
  full_masks = []
  for p, (joints, u) in enumerate(people):
    draw_person(canvas, rng, joints, u, p + 1)
    full_masks.append(canvas.owner == p + 1)
  _occluders(canvas, rng, width, height)
  anns = []
  for p, (joints, _) in enumerate(people):
    kpts = annotate_joints(canvas, joints, p + 1, width, height)
    box = mask_box(full_masks[p])
    if box is not None:
      anns.append((kpts, box))
  return canvas.image, anns


def mask_box(mask: np.ndarray) -> np.ndarray | None:
  """(H, W) bool → the (4,) xywh box around it, None when it is empty.

  Given the mask of a person as drawn before later layers cover it, this is the amodal box
  (parts hidden by later layers still count), like COCO boxes, which cover the whole
  visible-or-inferable person.
  """
  ys, xs = np.nonzero(mask)
  if len(xs) == 0:
    return None
  x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
  return np.array([x0, y0, x1 - x0, y1 - y0], np.float64)


# ------------------------------------------------------------------------------------------------
# Splits, files, CLI.

def _split_seed(seed: int, split: str) -> int:
  return zlib.crc32(split.encode()) ^ (seed * 2654435761 % 2**32)


def categories() -> list[dict]:
  """The COCO person category with its 17 joint names and skeleton (1-based)."""
  return [{"supercategory": "person", "id": 1, "name": "person",
           "keypoints": list(_INFO.joint_names),
           "skeleton": [[a + 1, b + 1] for a, b in _INFO.skeleton]}]


def _write_split(out: pathlib.Path, split: str, num: int, seed: int, image_size, id_base: int):
  width, height = image_size
  (out / split).mkdir(parents=True, exist_ok=True)
  images, anns, dets = [], [], []
  split_seed = _split_seed(seed, split)
  for i in range(num):
    rng = np.random.default_rng([split_seed, i])
    img, people = render_image(rng, width, height)
    image_id = id_base + i + 1
    name = f"{image_id:012d}.jpg"
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    assert ok
    (out / split / name).write_bytes(buf.tobytes())
    images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    for kpts, box in people:
      box = [round(float(v), 2) for v in box]
      ann = {"id": len(anns) + 1 + id_base * 10, "image_id": image_id, "category_id": 1,
             "iscrowd": 0, "bbox": box, "area": round(0.53 * box[2] * box[3], 2),
             "num_keypoints": int((kpts[:, 2] > 0).sum()),
             "keypoints": [float(v) if v % 1 else int(v) for v in kpts.reshape(-1)],
             "segmentation": []}
      anns.append(ann)
      jitter = rng.normal(0, 0.05, 4) * [box[2], box[3], box[2], box[3]]
      dets.append({"image_id": image_id, "category_id": 1,
                   "bbox": [round(float(v), 2) for v in np.array(box) + jitter],
                   "score": round(float(rng.uniform(0.5, 1.0)), 4)})
  coco = {"info": {"description": f"sbpose_jax synthetic people, split {split}, seed {seed}",
                   "version": str(FORMAT_VERSION)},
          "images": images, "annotations": anns, "categories": categories()}
  (out / "annotations").mkdir(exist_ok=True)
  with open(out / "annotations" / f"person_keypoints_{split}.json", "w") as f:
    json.dump(coco, f)
  if split != "train":
    with open(out / "annotations" / f"person_detections_{split}.json", "w") as f:
      json.dump(dets, f)


def generate(out_dir, num_images: Mapping[str, int], seed: int = 0,
             image_size: tuple[int, int] = (256, 192)) -> pathlib.Path:
  """Writes the synthetic dataset (see the module docstring) into `out_dir`.

  Args:
    out_dir: target folder (created; existing files of the same names are overwritten).
    num_images: images per split, e.g. {"train": 1000, "val": 200}.
    seed: everything is a function of (seed, split, image index).
    image_size: (W, H) of every image.

  Returns:
    out_dir as a Path.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for s, (split, num) in enumerate(sorted(num_images.items())):
    _write_split(out, split, int(num), seed, tuple(image_size), id_base=(s + 1) * 1_000_000)
  params = {"format_version": FORMAT_VERSION, "seed": seed, "image_size": list(image_size),
            "num_images": {k: int(v) for k, v in sorted(num_images.items())}}
  (out / "synthetic.json").write_text(json.dumps(params, indent=1) + "\n")
  return out


def ensure_synthetic(root, num_images: Mapping[str, int] | None = None, seed: int = 0,
                     image_size: tuple[int, int] = (256, 192)) -> pathlib.Path:
  """Generates the dataset at `root` unless it is already there with the same parameters.

  Atomic: writes to a temporary sibling folder and renames it, so an interrupted run leaves no
  half dataset and concurrent callers (several hosts on one file system) agree on one copy.
  Raises a ValueError if `root` holds a synthetic dataset made with other parameters, or
  anything else.
  """
  num_images = dict(num_images or {"train": 1000, "val": 200})
  root = pathlib.Path(root)
  want = {"format_version": FORMAT_VERSION, "seed": seed, "image_size": list(image_size),
          "num_images": {k: int(v) for k, v in sorted(num_images.items())}}
  return ensure_generated(root, lambda out: generate(out, num_images, seed, image_size),
                          "synthetic.json", want, "synthetic dataset", "data.root")


def ensure_from_config(config) -> pathlib.Path | None:
  """Generates `config.data.root` if `config.synthetic.enabled` (configs/demo.py).

  The section holds num_train, num_val, seed and image_size (W, H). Returns the root, or None
  when the config is not a synthetic one (nothing to do).
  """
  if not config.synthetic.enabled:
    return None
  s = config.synthetic
  return ensure_synthetic(config.data.root, {"train": s.num_train, "val": s.num_val},
                          seed=s.seed, image_size=tuple(s.image_size))


def ensure_generated(root, make: Callable[[pathlib.Path], object], marker_name: str,
                     want: dict, what: str, where: str) -> pathlib.Path:
  """`make(folder)` into `root` unless `root` holds it already with the marker `want`.

  Atomic: writes to a temporary sibling folder and renames it, so an interrupted run leaves no
  half dataset and concurrent callers agree on one copy. `what` and `where` name the dataset
  and the setting to change in the errors.
  """
  root = pathlib.Path(root)
  if not root.exists():
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
      make(tmp)
      os.rename(tmp, root)
    except OSError:
      if not root.exists():
        raise
      # Someone else finished first: theirs wins (checked below).
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  marker = root / marker_name
  if not marker.exists():
    raise ValueError(f"{root} exists but is not a {what} (no {marker.name}); "
                     f"choose another {where} or delete it")
  have = json.loads(marker.read_text())
  if have != want:
    raise ValueError(f"{marker} was generated with {have}, but {want} was asked for; "
                     "delete the folder to regenerate it")
  return root
