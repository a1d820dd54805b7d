"""Synthetic videos of stick people with known tracks, and still frames for a person detector.

The people of `data/synthetic.py` (same drawing, same joint conventions), now walking: each clip
(`num_frames` at 25 fps over a static cluttered background) holds `num_people` walkers with
scripted roles whose parameters are drawn from the seed:

  0 returner    walks out of the frame, waits outside, turns and walks back in (same track id)
  1, 2 crossers walk towards each other at different depths and cross: the nearer one hides the
                further one for a while
  3 approacher  walks towards (or away from) the camera, so its scale changes, and turns round
  4+ walkers    cross the frame at a random depth and speed

Walkers turn their bodies (up to 40 degrees) towards where they walk, so a change of direction
shows as a turn through the frontal view; a pillar in front of the scene hides whoever passes
behind it. Painter's order follows depth (the smaller walkers, further up the frame, first).

Ground truth per frame and person: the amodal box (the person as drawn before later layers
covered it, as `synthetic.mask_box`), 17 joints with COCO visibility (2 seen, 1 hidden by
someone or something, (0, 0, 0) outside the frame), the head box PoseTrack's PCKh needs and the
track id. A person enters a frame's ground truth when some pixel of it is seen there.

`generate_clips(out, {"val": 4})` writes the PoseTrack18 layout (as the PoseTrack18 fixture and
`video.open_source` read it):

  out/images/val/000000_synthetic/000000.jpg ...   the frames
  out/videos/val/000000_synthetic.mp4              the same frames as H.264 (`video.VideoWriter`)
  out/annotations/val/000000_synthetic.json        one PoseTrack18 file per clip
  out/annotations/posetrack18_val.json             all clips of the split in one file

`keypoint_format="posetrack18"` (the default) names the joints as PoseTrack18 does (head_bottom
and head_top where COCO has the eyes), which poseval's metrics need; `"coco"` writes the eyes.

`generate_stills(out, {"train": 2000, "val": 200})` writes single frames of fresh scenes (1-6
people) in the COCO person-keypoints layout of `data/synthetic.py` (`out/<split>/*.jpg`,
`out/annotations/person_keypoints_<split>.json` with boxes and keypoints): training and held-out
data for a person detector.

Everything is a function of the seed (and split, clip or image index): same arguments → the same
frames and json, byte for byte with one OpenCV build.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import zlib
from typing import Mapping

import cv2
import numpy as np

from sbpose_jax import keypoints
from sbpose_jax import video
from sbpose_jax.data import synthetic

FPS = 25
FORMAT_VERSION = 1
_JPEG_QUALITY = 90
_YAW_WALK = 40.0          # degrees a walker turns towards where it walks
_NOISE_STD = 2.0          # per-frame sensor noise, grey levels
_VID_BASE = 900000        # PoseTrack-like 6-digit video ids, clear of PoseTrack's own


# ------------------------------------------------------------------------------------------------
# The plan of a clip: every walker's path, scale, turn and gait phase per frame.

@dataclasses.dataclass(frozen=True)
class Walker:
  """One person of a scene; the arrays are per frame, (T,)."""
  track_id: int
  role: str
  colours: dict                  # synthetic.sample_colours
  build: np.ndarray              # (4,): shoulder and hip half-widths (u), arm and leg factors
  x: np.ndarray                  # pelvis x, px
  scale: np.ndarray              # body height / frame height (also the depth: feet lower)
  yaw: np.ndarray                # degrees; + = turned to walk right (the left side away)
  phase: np.ndarray              # gait phase, radians


@dataclasses.dataclass(frozen=True)
class Scene:
  width: int
  height: int
  num_frames: int
  background: np.ndarray         # (H, W, 3) uint8 BGR
  walkers: tuple[Walker, ...]
  occluders: tuple[tuple[np.ndarray, tuple], ...]   # ((4, 2) corners, BGR colour)
  noise_seed: int


def foot_y(scale, height: int):
  """Image row of the feet for a body of `scale` (fraction of the frame height): nearer people
  are larger and stand lower in the frame (a ground plane seen from eye level)."""
  return height * (0.52 + 0.46 * (np.asarray(scale) - 0.3) / 0.65)


def _returner(rng, w, h, t):
  side = rng.choice([-1.0, 1.0])
  s = rng.uniform(0.45, 0.7)
  outside = w / 2 + side * (w / 2 + 0.45 * s * h)   # arms reach ~0.35 of the height
  t1 = rng.uniform(0.25, 0.35) * (t - 1)
  t2 = t1 + rng.uniform(0.15, 0.25) * (t - 1)
  keys_x = [w / 2 + side * rng.uniform(0.15, 0.3) * w, outside, outside,
            w / 2 + side * rng.uniform(0.0, 0.25) * w]
  return np.interp(np.arange(t), [0, t1, t2, t - 1], keys_x), np.full(t, s)


def _crossers(rng, w, h, t):
  tm, xm = rng.uniform(0.4, 0.6) * (t - 1), rng.uniform(0.35, 0.65) * w
  d = rng.choice([-1.0, 1.0])
  out = []
  for s, direction in ((rng.uniform(0.65, 0.85), d), (rng.uniform(0.38, 0.55), -d)):
    v = rng.uniform(0.012, 0.02) * s * h          # px per frame, ~0.3-0.5 body heights a second
    out.append((xm + direction * v * (np.arange(t) - tm), np.full(t, s)))
  return out


def _approacher(rng, w, h, t):
  s0, s1 = rng.uniform(0.3, 0.42), rng.uniform(0.75, 0.95)
  if rng.random() < 0.3:
    s0, s1 = s1, s0                                # walks away instead
  x0 = rng.uniform(0.2, 0.8) * w
  d = 1.0 if x0 < w / 2 else -1.0
  tt = rng.uniform(0.35, 0.65) * (t - 1)
  xt = x0 + d * rng.uniform(0.15, 0.3) * w
  x1 = xt - d * rng.uniform(0.1, 0.25) * w
  return (np.interp(np.arange(t), [0, tt, t - 1], [x0, xt, x1]),
          np.interp(np.arange(t), [0, t - 1], [s0, s1]))


def _walker(rng, w, h, t):
  s = rng.uniform(0.35, 0.9)
  d = rng.choice([-1.0, 1.0])
  v = rng.uniform(0.012, 0.025) * s * h
  x0 = w / 2 - d * rng.uniform(0.1, 0.7) * w
  return x0 + d * v * np.arange(t), np.full(t, s)


def _smooth(v: np.ndarray, n: int = 9) -> np.ndarray:
  pad = np.pad(v, n // 2, mode="edge")
  return np.convolve(pad, np.ones(n) / n, mode="valid")


def _walker_from_path(rng, track_id, role, x, scale, height) -> Walker:
  dx = np.gradient(x)
  target = np.where(np.abs(dx) > 0.3, np.sign(dx) * _YAW_WALK, 0.0)
  # why: the gait advances with the distance walked; half a stride ~ 0.35 of the body height
  dist = np.hypot(dx, np.gradient(foot_y(scale, height)))
  phase = rng.uniform(0, 2 * np.pi) + np.pi * np.cumsum(dist) / (0.35 * scale * height)
  build = np.array([rng.uniform(0.85, 1.1), rng.uniform(0.5, 0.65), rng.uniform(0.8, 1.0),
                    rng.uniform(0.85, 1.0)])
  return Walker(track_id, role, synthetic.sample_colours(rng), build, x, scale,
                _smooth(target), phase)


def make_scene(rng: np.random.Generator, width: int, height: int, num_frames: int,
               num_people: int = 4) -> Scene:
  """Draws one clip's plan (see the module docstring for the roles)."""
  t = int(num_frames)
  paths = []
  if num_people >= 1:
    paths.append(("returner", *_returner(rng, width, height, t)))
  if num_people >= 2:
    crossers = _crossers(rng, width, height, t)
    paths += [("crosser", *p) for p in crossers[:num_people - 1]]
  if num_people >= 4:
    paths.append(("approacher", *_approacher(rng, width, height, t)))
  paths += [("walker", *_walker(rng, width, height, t)) for _ in range(num_people - len(paths))]
  walkers = tuple(_walker_from_path(rng, i, role, x, s, height)
                  for i, (role, x, s) in enumerate(paths))
  bg = synthetic.background(rng, width, height)
  px, pw = rng.uniform(0.15, 0.8) * width, rng.uniform(0.05, 0.09) * width
  pillar = np.array([[px, -1], [px + pw, -1], [px + pw, height + 1], [px, height + 1]])
  colour = tuple(float(c) for c in rng.integers(0, 255, 3))
  return Scene(width, height, t, bg, walkers, ((pillar, colour),),
               int(rng.integers(0, 2**31)))


# ------------------------------------------------------------------------------------------------
# One frame: poses, drawing, ground truth.

def _dir(angle_deg: float, lateral: float) -> np.ndarray:
  """Unit limb direction (lateral, down, forward) at `angle_deg` forward of 'down'."""
  a = np.deg2rad(angle_deg)
  v = np.array([lateral, np.cos(a), np.sin(a)])
  return v / np.linalg.norm(v)


def walker_pose(wk: Walker, t: int, height: int):
  """The pose of walker `wk` in frame `t`.

  Returns:
    joints: (17, 2) image xy in COCO order; head: (2, 2) image xy of head_bottom, head_top
    (PoseTrack18's joints); u: the body unit in px (height / 7.5, as synthetic.sample_pose).
  """
  s, phi, yaw = wk.scale[t], wk.phase[t], np.deg2rad(wk.yaw[t])
  u = s * height / 7.5
  sho, hip, arm, leg = wk.build
  j = np.zeros((17, 3))                       # person frame: (left, down, forward), units of u
  neck = np.array([0.0, -2.6, 0.0])
  j[5], j[6] = neck + [sho, 0.1, 0], neck + [-sho, 0.1, 0]
  j[11], j[12] = [hip, 0, 0], [-hip, 0, 0]
  head = neck + [0, -0.95, 0]
  j[0] = head + [0, 0.15, 0.45]
  j[1], j[2] = head + [0.24, -0.1, 0.38], head + [-0.24, -0.1, 0.38]
  j[3], j[4] = head + [0.55, 0, 0], head + [-0.55, 0, 0]
  for side, (hp, kn, an), off in ((1, (11, 13, 15), 0.0), (-1, (12, 14, 16), np.pi)):
    swing = 25 * np.sin(phi + off)
    bend = 10 + 45 * max(0.0, np.cos(phi + off))        # the knee bends while the leg swings
    j[kn] = j[hp] + 1.85 * leg * _dir(swing, 0.07 * side)
    j[an] = j[kn] + 1.75 * leg * _dir(swing - bend, 0.02 * side)
  for side, (sh, el, wr), off in ((1, (5, 7, 9), np.pi), (-1, (6, 8, 10), 0.0)):
    swing = 20 * np.sin(phi + off)                      # arms swing against the legs
    j[el] = j[sh] + 1.35 * arm * _dir(swing, 0.15 * side)
    j[wr] = j[el] + 1.2 * arm * _dir(swing + 25, 0.1 * side)
  heads = np.stack([head + [0, 0.45, 0], head + [0, -0.45, 0]])
  pts = np.concatenate([j, heads])
  xy = np.stack([pts[:, 0] * np.cos(yaw) + pts[:, 2] * np.sin(yaw), pts[:, 1]], 1)
  bob = 0.05 * np.cos(2 * phi)
  pelvis = np.array([wk.x[t], foot_y(s, height) - (3.6 * leg + 0.3 - bob) * u])
  xy = pelvis + u * xy
  return xy[:17], xy[17:], u


def head_box(head: np.ndarray, u: float) -> list[float]:
  """xywh of the head circle (radius 0.5 u) around the midpoint of (2, 2) head_bottom/top."""
  c = head.mean(0)
  return [round(float(c[0] - 0.5 * u), 2), round(float(c[1] - 0.5 * u), 2),
          round(float(u), 2), round(float(u), 2)]


def render_frame(scene: Scene, t: int):
  """Frame `t` of `scene` → (BGR uint8 (H, W, 3), [person]) with, per person seen in the frame,
  {"track_id", "coco" (17, 3), "posetrack18" (17, 3) keypoints, "bbox" (4,) xywh, "bbox_head"}.
  """
  w, h = scene.width, scene.height
  canvas = synthetic.Canvas(scene.background.copy())
  order = sorted(range(len(scene.walkers)), key=lambda i: (scene.walkers[i].scale[t], i))
  poses, full = {}, {}
  for i in order:
    wk = scene.walkers[i]
    joints, head, u = walker_pose(wk, t, h)
    synthetic.draw_body(canvas, joints, u, i + 1, wk.colours, left_first=wk.yaw[t] >= 0)
    poses[i], full[i] = (joints, head, u), canvas.owner == i + 1
  for corners, colour in scene.occluders:
    canvas.polygon(corners, colour, synthetic.OCCLUDER)
  noise = np.random.default_rng([scene.noise_seed, t]).normal(0, _NOISE_STD, canvas.image.shape)
  image = np.clip(canvas.image + noise, 0, 255).astype(np.uint8)
  people = []
  for i, wk in enumerate(scene.walkers):
    box = synthetic.mask_box(full[i])
    if box is None or not (canvas.owner == i + 1).any():
      continue                                   # outside the frame or hidden altogether
    joints, head, u = poses[i]
    pt = joints.copy()
    pt[1:3] = head
    people.append({"track_id": wk.track_id,
                   "coco": synthetic.annotate_joints(canvas, joints, i + 1, w, h),
                   "posetrack18": synthetic.annotate_joints(canvas, pt, i + 1, w, h),
                   "bbox": box, "bbox_head": head_box(head, u)})
  return image, people


# ------------------------------------------------------------------------------------------------
# Files.

def _seed(seed: int, split: str, index: int) -> list[int]:
  return [int(seed), zlib.crc32(split.encode()), int(index)]


def _kpt_list(k: np.ndarray) -> list:
  return [float(v) if v % 1 else int(v) for v in k.reshape(-1)]


def _annotation(p: dict, ann_id: int, image_id: int, kind: str) -> dict:
  box = [round(float(v), 2) for v in p["bbox"]]
  k = p[kind]
  return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": box,
          # why: as data/synthetic.py: stick limbs cover less of the box than real bodies
          "area": round(0.53 * box[2] * box[3], 2), "num_keypoints": int((k[:, 2] > 0).sum()),
          "keypoints": _kpt_list(k), "segmentation": []}


def _categories(keypoint_format: str) -> list[dict]:
  formats = {"posetrack18": keypoints.POSETRACK18, "coco": keypoints.COCO}
  if keypoint_format not in formats:
    raise ValueError(f"keypoint_format must be 'posetrack18' or 'coco', not {keypoint_format!r}")
  info = formats[keypoint_format]
  cat = synthetic.categories()[0]
  return [{**cat, "keypoints": list(info.joint_names)}]


def _jpeg(path: pathlib.Path, image: np.ndarray) -> None:
  ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
  if not ok:
    raise OSError(f"cannot encode {path}")
  path.write_bytes(buf.tobytes())


def write_clip(out_dir, scene: Scene, vid_num: int, split: str = "val", fps: float = FPS,
               keypoint_format: str = "posetrack18") -> dict:
  """Writes one clip (frames, mp4, PoseTrack18 json; layout in the module docstring).

  Returns the clip's PoseTrack18 dict (file names relative to `out_dir`).
  """
  categories = _categories(keypoint_format)
  out = pathlib.Path(out_dir)
  vid = f"{vid_num:06d}"
  name = f"{vid}_synthetic"
  frame_dir = out / "images" / split / name
  frame_dir.mkdir(parents=True, exist_ok=True)
  (out / "videos" / split).mkdir(parents=True, exist_ok=True)
  images, anns = [], []
  with video.VideoWriter(str(out / "videos" / split / f"{name}.mp4"), fps) as writer:
    for t in range(scene.num_frames):
      image, people = render_frame(scene, t)
      _jpeg(frame_dir / f"{t:06d}.jpg", image)
      writer.write(image)
      # PoseTrack18's ids: 1, the 6-digit video id, the 4-digit frame index
      image_id = 10_000_000_000 + vid_num * 10_000 + t
      images.append({"has_no_densepose": True, "is_labeled": True,
                     "file_name": f"images/{split}/{name}/{t:06d}.jpg",
                     "nframes": scene.num_frames, "frame_id": image_id, "vid_id": vid,
                     "id": image_id, "width": scene.width, "height": scene.height})
      for k, p in enumerate(people):
        a = _annotation(p, image_id * 100 + k, image_id, keypoint_format)
        anns.append({**a, "track_id": p["track_id"], "bbox_head": p["bbox_head"],
                     "scores": []})
  data = {"images": images, "annotations": anns, "categories": categories}
  (out / "annotations" / split).mkdir(parents=True, exist_ok=True)
  (out / "annotations" / split / f"{name}.json").write_text(json.dumps(data))
  return data


def generate_clips(out_dir, num_clips: Mapping[str, int], seed: int = 0,
                   frame_size: tuple[int, int] = (320, 240), num_frames: int = 100,
                   num_people: int = 4, fps: float = FPS,
                   keypoint_format: str = "posetrack18") -> pathlib.Path:
  """Writes `num_clips[split]` clips per split (layout in the module docstring).

  Args:
    out_dir: target folder (created; files of the same names are overwritten).
    num_clips: clips per split, e.g. {"val": 4}.
    seed: clip i of a split is a function of (seed, split, i).
    frame_size: (W, H), even (H.264 needs it).
    num_frames: frames per clip (100 = 4 s at 25 fps).
    num_people: walkers per clip (roles in the module docstring).
    fps: frame rate of the mp4.
    keypoint_format: "posetrack18" (head_bottom, head_top) or "coco" (the eyes).
  """
  w, h = (int(v) for v in frame_size)
  if w % 2 or h % 2:
    raise ValueError(f"frame_size must be even (H.264), got {frame_size}")
  _categories(keypoint_format)                       # why: refuse a bad format before writing
  out = pathlib.Path(out_dir)
  base = 0
  for split, n in sorted(num_clips.items()):
    merged: dict = {"images": [], "annotations": [], "categories": _categories(keypoint_format)}
    for i in range(int(n)):
      scene = make_scene(np.random.default_rng(_seed(seed, split, i)), w, h, num_frames,
                         num_people)
      data = write_clip(out, scene, _VID_BASE + base + i, split, fps, keypoint_format)
      merged["images"] += data["images"]
      merged["annotations"] += data["annotations"]
    base += int(n)
    (out / "annotations" / f"posetrack18_{split}.json").write_text(json.dumps(merged))
  params = _marker("clips", dict(num_clips=num_clips, seed=seed, frame_size=frame_size,
                                 num_frames=num_frames, num_people=num_people, fps=fps,
                                 keypoint_format=keypoint_format))
  (out / "synthetic_video.json").write_text(json.dumps(params, indent=1) + "\n")
  return out


def generate_stills(out_dir, num_images: Mapping[str, int], seed: int = 0,
                    frame_size: tuple[int, int] = (320, 240), num_frames: int = 100,
                    max_people: int = 6, keypoint_format: str = "coco") -> pathlib.Path:
  """Writes single frames of fresh scenes in COCO person-keypoints format, for a detector.

  Image i of a split: a scene of 1..`max_people` walkers drawn from (seed, split, i), at a
  random frame of its `num_frames`. Layout as data/synthetic.py (`out/<split>/<id>.jpg`,
  `out/annotations/person_keypoints_<split>.json`: boxes, areas, 17 keypoints named as
  `keypoint_format` says: "coco", or "posetrack18" for a pose model whose output poseval reads).
  """
  w, h = (int(v) for v in frame_size)
  categories = _categories(keypoint_format)
  out = pathlib.Path(out_dir)
  for s, (split, n) in enumerate(sorted(num_images.items())):
    (out / split).mkdir(parents=True, exist_ok=True)
    id_base = (s + 1) * 1_000_000
    images, anns = [], []
    for i in range(int(n)):
      rng = np.random.default_rng(_seed(seed, split, i))
      scene = make_scene(rng, w, h, num_frames, int(rng.integers(1, max_people + 1)))
      image, people = render_frame(scene, int(rng.integers(num_frames)))
      image_id = id_base + i + 1
      name = f"{image_id:012d}.jpg"
      _jpeg(out / split / name, image)
      images.append({"id": image_id, "file_name": name, "width": w, "height": h})
      anns += [_annotation(p, image_id * 10 + k, image_id, keypoint_format)
               for k, p in enumerate(people)]
    coco = {"info": {"description": f"sbpose_jax synthetic video stills, split {split}, "
                                    f"seed {seed}", "version": str(FORMAT_VERSION)},
            "images": images, "annotations": anns, "categories": categories}
    (out / "annotations").mkdir(exist_ok=True)
    (out / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(coco))
  params = _marker("stills", dict(num_images=num_images, seed=seed, frame_size=frame_size,
                                  num_frames=num_frames, max_people=max_people,
                                  keypoint_format=keypoint_format))
  (out / "synthetic_video.json").write_text(json.dumps(params, indent=1) + "\n")
  return out


def _marker(kind: str, args: dict) -> dict:
  """The parameters file's content: what `ensure` compares (json types: lists, sorted keys)."""
  out = {"kind": kind, "format_version": FORMAT_VERSION}
  for k, v in args.items():
    if isinstance(v, Mapping):
      v = {a: int(b) for a, b in sorted(v.items())}
    out[k] = list(v) if isinstance(v, tuple) else v
  return out


def ensure(root, kind: str, **params) -> pathlib.Path:
  """`generate_clips` (kind "clips") or `generate_stills` ("stills") into `root` unless it is
  already there with the same parameters; atomic as `synthetic.ensure_synthetic` (written to a
  sibling folder, then renamed). Raises ValueError if `root` holds something else."""
  make = {"clips": generate_clips, "stills": generate_stills}[kind]
  bound = inspect.signature(make).bind(root, **params)
  bound.apply_defaults()
  want = _marker(kind, {k: v for k, v in bound.arguments.items() if k != "out_dir"})
  return synthetic.ensure_generated(root, lambda out: make(out, **params),
                                    "synthetic_video.json", want, "synthetic video dataset",
                                    "folder")
