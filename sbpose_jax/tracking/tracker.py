"""The per-frame tracking state machine (the paper's §3.2-3.4, MMPose 0.x's id rules).

Per frame, in two calls around the pose model:
1. `propose(frame, det_boxes, det_scores)`: optical flow previous → current frame moves every
   live track's joints; boxes around the moved joints of the tracks seen in the previous frame,
   enlarged by 15%, join the detector's boxes, unified by box NMS (a propagated box that
   repeats a detector box goes). A propagated box carries the score of the detector box its
   track last came from, so a person the detector misses for a few frames keeps their score.
   With no detector at all and nothing to propagate, the whole frame is one box.
2. `update(kpts, boxes, box_scores)`: duplicate poses removed (OKS-NMS; a propagated box's pose
   also goes when its OKS with a detected box's pose exceeds `propagated_oks`, 0.1: a box
   that drifted from its person overlaps the person's new detection too little for the box
   NMS, but its pose finds the same person, or half of two who cross, and would live on as a
   ghost track; propagation is for the people the detector missed, far from its poses),
   similarity to the
   tracks of the last `queue_len` frames (iou / oks against their last pose, or flow: OKS
   against their last pose moved by flow), greedy matching above `match_thr`; an unmatched pose
   starts a new track only with >= `min_keypoints` joints above `kpt_thr`, else gets id -1.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from sbpose_jax.tracking import flow as flow_lib
from sbpose_jax.tracking import matching
from sbpose_jax.tracking import smoothing


@dataclasses.dataclass(frozen=True)
class TrackSettings:
  similarity: str = "flow"       # iou | oks | flow
  match_thr: float = 0.3         # MMPose 0.x tracking_thr
  min_keypoints: int = 3         # joints above kpt_thr for a new id
  kpt_thr: float = 0.3           # joint score counted as visible (boxes, OKS, new ids)
  queue_len: int = 5             # frames a lost track can come back within
  propagate: bool = True         # add flow-propagated boxes to the detector's
  box_enlarge: float = 0.15      # growth of the box around propagated joints
  nms_iou: float = 0.5           # a propagated box overlapping a detector box more goes
  pose_nms_oks: float = 0.9      # duplicate poses (OKS above this) dropped
  propagated_oks: float = 0.1    # a propagated box's pose near a detected one's goes
  det_score_thr: float = 0.4     # detector boxes below this score are not used
  flow_preset: str = "fast"      # cv2 DIS preset: ultrafast | fast | medium
  flow_max_side: int = 640       # flow computed at most at this size (longer side)
  smoothing: bool = False        # One-Euro filter on the joints
  fps: float = 30.0
  one_euro_min_cutoff: float = 1.0
  one_euro_beta: float = 0.007

  @classmethod
  def from_config(cls, track_cfg) -> "TrackSettings":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(track_cfg).items() if k in fields})


@dataclasses.dataclass
class Track:
  kpts: np.ndarray               # (K, 3) last pose
  box: np.ndarray                # (4,) last box
  score: float                   # last pose score (box score x mean joint score)
  moved: np.ndarray              # (K, 3) last pose moved by flow to the current frame
  age: int = 0                   # frames since last seen
  box_score: float = 1.0         # score of the detector box the track last came from


class Tracker:
  """Stateful; one per video. `sigmas`: (K,) OKS sigmas of the model's dataset."""

  def __init__(self, settings: TrackSettings, sigmas: np.ndarray, flow_fn=None):
    if settings.similarity not in matching.SIMILARITIES:
      raise ValueError(f"similarity must be one of {matching.SIMILARITIES}, "
                       f"got {settings.similarity!r}")
    self.s = settings
    self.sigmas = np.asarray(sigmas, np.float64)
    self.needs_flow = settings.propagate or settings.similarity == "flow"
    self.flow = flow_fn or (flow_lib.DisFlow(settings.flow_preset, settings.flow_max_side)
                            if self.needs_flow else None)
    self.smoother = smoothing.PoseSmoother(
        fps=settings.fps, min_cutoff=settings.one_euro_min_cutoff,
        beta=settings.one_euro_beta) if settings.smoothing else None
    self.tracks: dict[int, Track] = {}
    self.next_id = 0
    self.prev_frame = None
    # The last proposal (boxes, of which detected): its first boxes are the detector's, the rest
    # propagated; `update` reads it when given as many boxes.
    self._proposal = (0, 0)

  def propose(self, frame: np.ndarray, det_boxes=None, det_scores=None, flow=None):
    """Boxes for this frame: (M, 4) x1 y1 x2 y2 float32 and (M,) scores.

    `det_boxes=None` means no detector at all (the whole-frame fallback applies); an empty
    array means the detector found nobody in this frame. `flow`: the (H, W, 2) flow previous →
    this frame if already computed (e.g. in the decoding thread), else computed here when needed.
    """
    if self.needs_flow and self.prev_frame is not None and self.tracks:
      fl = flow if flow is not None else self.flow(self.prev_frame, frame)
      moved = flow_lib.propagate_joints(np.stack([t.moved for t in self.tracks.values()]), fl)
      for t, m in zip(self.tracks.values(), moved):
        t.moved = m
    self.prev_frame = frame
    h, w = frame.shape[:2]
    db, ds = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    if det_boxes is not None and len(det_boxes):
      db = np.asarray(det_boxes, np.float32).reshape(-1, 4)
      ds = (np.ones(len(db), np.float32) if det_scores is None
            else np.asarray(det_scores, np.float32).reshape(-1))
      ok = ds >= self.s.det_score_thr
      db, ds = db[ok], ds[ok]
    pb, ps = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    live = [t for t in self.tracks.values() if t.age == 0] if self.s.propagate else []
    if live:
      pb, keep = flow_lib.boxes_around(np.stack([t.moved for t in live]), self.s.kpt_thr,
                                       self.s.box_enlarge, self.s.min_keypoints)
      ps = np.asarray([live[i].box_score for i in keep], np.float32)
      # Joints can be predicted outside the frame; a box beyond it would only grow each frame.
      pb = np.clip(pb, 0, [w, h, w, h]).astype(np.float32)
      ok = (pb[:, 2] - pb[:, 0] >= 2) & (pb[:, 3] - pb[:, 1] >= 2)
      pb, ps = pb[ok], ps[ok]
    if len(db) == 0 and len(pb) == 0:
      if det_boxes is None:
        self._proposal = (1, 1)
        return np.asarray([[0, 0, w, h]], np.float32), np.ones(1, np.float32)
      self._proposal = (0, 0)
      return db, ds
    # NMS with the detector's boxes first: they are kept as the detector gave them (it ran its
    # own NMS, and people who cross overlap), a propagated box goes when it repeats one of them.
    # Propagated boxes are one per track, so they are not suppressed among themselves; poses
    # that still come out twice are removed by the OKS-NMS in `update`.
    if len(db) and len(pb):
      ok = matching.box_iou(pb, db).max(axis=1) <= self.s.nms_iou
      pb, ps = pb[ok], ps[ok]
    self._proposal = (len(db) + len(pb), len(db))
    return np.concatenate([db, pb]), np.concatenate([ds, ps])

  def _pose_scores(self, kpts: np.ndarray, box_scores: np.ndarray) -> np.ndarray:
    """MMPose rescoring: box score x mean of the joint scores above kpt_thr."""
    v = kpts[..., 2] > self.s.kpt_thr
    mean = np.where(v.any(-1), (kpts[..., 2] * v).sum(-1) / np.maximum(v.sum(-1), 1), 0.0)
    return mean * box_scores

  def update(self, kpts: np.ndarray, boxes: np.ndarray, box_scores: np.ndarray) -> list[dict]:
    """Poses (N, K, 3) of this frame's boxes → [{track_id, keypoints, box, score}], ids >= 0.

    Poses that get no id (too few visible joints) are left out.
    """
    kpts = np.asarray(kpts, np.float32).reshape(len(boxes), len(self.sigmas), 3)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    box_scores = np.asarray(box_scores, np.float32).reshape(-1)
    proposed, n_det = self._proposal
    if proposed != len(boxes):                  # boxes not from `propose`: all detections
      n_det = len(boxes)
    self._proposal = (0, 0)
    scores = self._pose_scores(kpts, box_scores)
    keep = self._pose_nms(kpts, boxes, scores, n_det)
    kpts, boxes, scores, box_scores = kpts[keep], boxes[keep], scores[keep], box_scores[keep]
    ids = np.full(len(kpts), -1, int)
    tids = list(self.tracks)
    if tids and len(kpts):
      ref = [self.tracks[t].moved if self.s.similarity == "flow" else self.tracks[t].kpts
             for t in tids]
      sim = matching.similarity(self.s.similarity, kpts, boxes, np.stack(ref),
                                np.stack([self.tracks[t].box for t in tids]), self.sigmas,
                                self.s.kpt_thr)
      for r, c in matching.greedy_match(sim, self.s.match_thr):
        ids[r] = tids[c]
    for n in np.nonzero(ids < 0)[0]:
      if (kpts[n, :, 2] > self.s.kpt_thr).sum() >= self.s.min_keypoints:
        ids[n] = self.next_id
        self.next_id += 1
    if self.smoother is not None:
      kpts = self.smoother.smooth(ids, kpts)
    for t in self.tracks.values():
      t.age += 1
    out = []
    for n in np.nonzero(ids >= 0)[0]:
      self.tracks[int(ids[n])] = Track(kpts[n].copy(), boxes[n].copy(), float(scores[n]),
                                       kpts[n].copy(), box_score=float(box_scores[n]))
      out.append(dict(track_id=int(ids[n]), keypoints=kpts[n], box=boxes[n],
                      score=float(scores[n])))
    self.tracks = {i: t for i, t in self.tracks.items() if t.age < self.s.queue_len}
    if self.smoother is not None:
      self.smoother.forget(self.tracks)
    return out

  def _pose_nms(self, kpts, boxes, scores, n_det: int) -> np.ndarray:
    """Indices kept after greedy OKS-NMS among this frame's poses, in score order; the poses
    from index `n_det` on (propagated boxes) go also when a kept detected pose repeats them
    above `propagated_oks`, whatever the scores."""
    if len(kpts) < 2:
      return np.arange(len(kpts))
    areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1)
    sim = matching.oks(kpts, kpts, areas, self.sigmas, self.s.kpt_thr)
    order, keep = np.argsort(-scores, kind="stable"), []
    for i in order:
      if all(sim[i, j] <= self.s.pose_nms_oks for j in keep):
        keep.append(int(i))
    detected = [j for j in keep if j < n_det]
    keep = [i for i in keep if i < n_det
            or all(max(sim[i, j], sim[j, i]) <= self.s.propagated_oks for j in detected)]
    return np.asarray(keep, int)
