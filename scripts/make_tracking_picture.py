"""docs/tracking_flow.png: hand-placed seed poses on frame 0 of the PoseTrack fixture clip, moved
through frames 1-4 by DIS optical flow (the tracker's propagation), with the 15%-enlarged boxes.

  python scripts/make_tracking_picture.py [--out docs/tracking_flow.png]

No trained weights exist on the build machines, so the frame-0 poses are placed by hand (rough);
everything after frame 0 is what `sbpose_jax.tracking` computes.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import cv2
import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sbpose_jax import keypoints, video  # noqa: E402
from sbpose_jax.tracking import draw, flow  # noqa: E402

# (x, y) at half resolution (640 x 360) in PoseTrack18 joint order: nose, head_bottom, head_top,
# ears (unused), shoulders L/R, elbows, wrists, hips, knees, ankles.
SEEDS = {
    0: [(231, 150), (232, 160), (230, 140), None, None, (244, 166), (221, 166), (250, 186),
        (214, 186), (270, 190), (207, 200), (240, 210), (226, 210), (250, 238), (214, 236),
        (268, 272), (190, 255)],
    1: [(367, 140), (364, 150), (367, 132), None, None, (375, 155), (352, 155), (335, 148),
        (325, 145), (315, 140), (308, 138), (375, 192), (362, 192), (392, 215), (365, 218),
        (410, 240), (395, 252)],
}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=str(REPO / "docs/tracking_flow.png"))
  args = ap.parse_args()
  clip = REPO.parent / "shared/fixtures/posetrack18/videos/000001_mpiinew_test"
  frames = [f.image for f in video.open_source(str(clip / "000001_mpiinew_test.mp4")).frames()]
  kp = np.zeros((len(SEEDS), 17, 3), np.float32)
  for t, pts in SEEDS.items():
    for j, p in enumerate(pts):
      if p is not None:
        kp[t, j] = (2 * p[0], 2 * p[1], 1.0)
  dis = flow.DisFlow("medium")
  skeleton = keypoints.get("posetrack18").skeleton
  tiles = []
  for t, img in enumerate(frames):
    if t > 0:
      kp = flow.propagate_joints(kp, dis(frames[t - 1], img))
    out = draw.draw_tracks(img, [dict(track_id=i, keypoints=k) for i, k in enumerate(kp)],
                           skeleton, 0.3)
    boxes, _ = flow.boxes_around(kp, 0.3, 0.15)
    for i, b in enumerate(boxes):
      cv2.rectangle(out, tuple(map(int, b[:2])), tuple(map(int, b[2:])),
                    draw.track_colour(i), 2, cv2.LINE_AA)
    cv2.putText(out, f"frame {t}", (335, 575), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3)
    if t in (0, 2, 4):
      tiles.append(cv2.resize(out[170:590, 320:960], (400, 262), interpolation=cv2.INTER_AREA))
  cv2.imwrite(args.out, np.concatenate(tiles, 1), [cv2.IMWRITE_PNG_COMPRESSION, 9])
  print(args.out, pathlib.Path(args.out).stat().st_size // 1024, "KB")


if __name__ == "__main__":
  main()
