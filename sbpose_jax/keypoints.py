"""Per-dataset keypoint metadata as plain data: joint names, flip pairs, upper-body ids, OKS sigmas.

Values follow MMPose 0.x `configs/_base_/datasets/*.py` (see
docs/reference.md §6).
"""
from __future__ import annotations

import dataclasses

import numpy as np

_COCO_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle")
_COCO_FLIP = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
_COCO_SIGMAS = (.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107,
                .087, .087, .089, .089)
_COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
                  (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4),
                  (3, 5), (4, 6))


@dataclasses.dataclass(frozen=True)
class KeypointInfo:
  """Static description of one dataset's keypoints. Index = output heatmap channel."""
  name: str
  joint_names: tuple[str, ...]
  flip_pairs: tuple[tuple[int, int], ...]
  upper_body_ids: tuple[int, ...]
  sigmas: tuple[float, ...]          # OKS sigmas as used by the metric of the published table
  skeleton: tuple[tuple[int, int], ...] = ()
  num_joints_half_body: int = 8      # half-body applies iff #visible > this

  @property
  def num_joints(self) -> int:
    return len(self.joint_names)

  @property
  def flip_index(self) -> np.ndarray:
    """(K,) int permutation: channel k of a flipped image holds joint flip_index[k]."""
    perm = np.arange(self.num_joints)
    for a, b in self.flip_pairs:
      perm[a], perm[b] = b, a
    return perm

  @property
  def sigmas_array(self) -> np.ndarray:
    return np.asarray(self.sigmas, np.float64)


COCO = KeypointInfo("coco", _COCO_NAMES, _COCO_FLIP, tuple(range(11)), _COCO_SIGMAS,
                    _COCO_SKELETON)
OCHUMAN = dataclasses.replace(COCO, name="ochuman")
POSETRACK18 = KeypointInfo(
    "posetrack18",
    ("nose", "head_bottom", "head_top") + _COCO_NAMES[3:],
    _COCO_FLIP[1:], tuple(range(11)), _COCO_SIGMAS,
    ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
     (6, 8), (7, 9), (8, 10), (0, 1), (1, 2), (1, 5), (1, 6)))

_AIC_SIGMAS = (0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144,
               0.03909642, 0.03686941, 0.01981803, 0.03843971, 0.03412318, 0.02415081,
               0.01291456, 0.01236173)
AIC = KeypointInfo(
    "aic",
    ("right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
     "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
     "left_ankle", "head_top", "neck"),
    ((0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11)),
    (0, 1, 2, 3, 4, 5, 12, 13),
    # The 2020 checkpoints were scored with the sigmas doubled (docs/reference.md §0).
    tuple(2 * s for s in _AIC_SIGMAS),
    ((2, 1), (1, 0), (0, 13), (13, 3), (3, 4), (4, 5), (8, 7), (7, 6), (6, 9), (9, 10),
     (10, 11), (12, 13), (0, 6), (3, 9)))
AIC_SIGMAS_CORRECTED = _AIC_SIGMAS

CROWDPOSE = KeypointInfo(
    "crowdpose",
    ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
     "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
     "right_ankle", "top_head", "neck"),
    ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)),
    (0, 1, 2, 3, 4, 5, 12, 13),
    (.079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089, .079, .079),
    ((0, 2), (2, 4), (1, 3), (3, 5), (0, 1), (0, 6), (1, 7), (6, 7), (6, 8), (8, 10), (7, 9),
     (9, 11), (12, 13), (13, 0), (13, 1)),
    num_joints_half_body=6)

MPII = KeypointInfo(
    "mpii",
    ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis",
     "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder",
     "left_shoulder", "left_elbow", "left_wrist"),
    ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    tuple(range(7, 16)),
    # Unused by PCKh; MMPose's base file values, kept so OKS-NMS has something sensible.
    (.089, .083, .107, .107, .083, .089, .026, .026, .026, .026, .062, .072, .179, .179, .072,
     .062),
    ((0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (8, 12), (12, 11),
     (11, 10), (8, 13), (13, 14), (14, 15)))

_TRB_SIDES = ("shoulder", "elbow", "wrist")
_TRB_LEGS = ("hip", "knee", "ankle")
MPII_TRB = KeypointInfo(
    "mpii_trb",
    ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
     "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
     "right_ankle", "head", "neck", "right_neck", "left_neck")
    + tuple(f"{m}_right_{p}" for p in _TRB_SIDES for m in ("medial", "lateral"))
    + tuple(f"{m}_left_{p}" for p in _TRB_SIDES for m in ("medial", "lateral"))
    + tuple(f"{m}_right_{p}" for p in _TRB_LEGS for m in ("medial", "lateral"))
    + tuple(f"{m}_left_{p}" for p in _TRB_LEGS for m in ("medial", "lateral")),
    ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (14, 15))
    + tuple((16 + i, 22 + i) for i in range(6)) + tuple((28 + i, 34 + i) for i in range(6)),
    tuple(range(0, 6)) + tuple(range(12, 28)),
    (0.05,) * 40,  # unused by the TRB metric
    ((0, 2), (2, 4), (1, 3), (3, 5), (0, 1), (0, 6), (1, 7), (6, 7), (6, 8), (8, 10), (7, 9),
     (9, 11), (12, 13), (13, 0), (13, 1)))

_FOOT_SIGMAS = (.068, .066, .066, .092, .094, .094)
_FACE_SIGMAS = tuple(float(s) for s in """
.042 .043 .044 .043 .040 .035 .031 .025 .020 .023 .029 .032 .037 .038 .043 .041 .045 .013 .012
.011 .011 .012 .012 .011 .011 .013 .015 .009 .007 .007 .007 .012 .009 .008 .016 .010 .017 .011
.009 .011 .009 .007 .013 .008 .011 .012 .010 .034 .008 .008 .009 .008 .008 .007 .010 .008 .009
.009 .009 .007 .007 .008 .011 .008 .008 .008 .010 .008""".split())
_HAND_SIGMAS = (.029, .022, .035, .037, .047, .026, .025, .024, .035, .018, .024, .022, .026,
                .017, .021, .021, .032, .020, .019, .022, .031)
_HAND_PARTS = ("root",) + tuple(f"{f}{i}" for f in ("thumb", "forefinger", "middle_finger",
                                                    "ring_finger", "pinky_finger")
                               for i in range(1, 5))
_FACE_FLIP = ((23, 39), (24, 38), (25, 37), (26, 36), (27, 35), (28, 34), (29, 33), (30, 32),
              (40, 49), (41, 48), (42, 47), (43, 46), (44, 45), (54, 58), (55, 57), (59, 68),
              (60, 67), (61, 66), (62, 65), (63, 70), (64, 69), (71, 77), (72, 76), (73, 75),
              (78, 82), (79, 81), (83, 87), (84, 86), (88, 90))
COCO_WHOLEBODY = KeypointInfo(
    "coco_wholebody",
    _COCO_NAMES + ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe",
                   "right_small_toe", "right_heel")
    + tuple(f"face-{i}" for i in range(68))
    + tuple(f"left_hand_{p}" for p in _HAND_PARTS) + tuple(f"right_hand_{p}" for p in _HAND_PARTS),
    _COCO_FLIP + ((17, 20), (18, 21), (19, 22)) + _FACE_FLIP
    + tuple((91 + i, 112 + i) for i in range(21)),
    tuple(range(11)),
    _COCO_SIGMAS + _FOOT_SIGMAS + _FACE_SIGMAS + _HAND_SIGMAS + _HAND_SIGMAS,
    _COCO_SKELETON + ((15, 17), (15, 18), (15, 19), (16, 20), (16, 21), (16, 22))
    + tuple((91 + a, 91 + b) for a, b in ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6),
                                          (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
                                          (0, 13), (13, 14), (14, 15), (15, 16), (0, 17),
                                          (17, 18), (18, 19), (19, 20)))
    + tuple((112 + a, 112 + b) for a, b in ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6),
                                            (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
                                            (0, 13), (13, 14), (14, 15), (15, 16), (0, 17),
                                            (17, 18), (18, 19), (19, 20))))
# COCO-WholeBody part slices (order of the 133-joint concatenation).
WHOLEBODY_PARTS = {"body": (0, 17), "foot": (17, 23), "face": (23, 91),
                   "lefthand": (91, 112), "righthand": (112, 133)}

DATASETS: dict[str, KeypointInfo] = {
    k.name: k for k in (COCO, OCHUMAN, POSETRACK18, AIC, CROWDPOSE, MPII, MPII_TRB,
                        COCO_WHOLEBODY)}


def get(name: str) -> KeypointInfo:
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None
