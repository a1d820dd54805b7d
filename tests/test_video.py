"""Video I/O: the three input kinds, background decoding, errors naming the frame, the writer."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from sbpose_jax import video


def _write(path, n, size=(64, 48), **opts):
  import av  # why: pyAV loads only when a video is read or written
  rng = np.random.default_rng(0)
  imgs = [rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]
  with av.open(str(path), "w", options=opts) as c:
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
    for img in imgs:
      for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return imgs


def test_video_round_trip_and_prefetch(tmp_path):
  _write(tmp_path / "a.mp4", 7)
  src = video.open_source(str(tmp_path / "a.mp4"))
  assert (src.kind, src.num_frames, src.fps, src.name) == ("video", 7, 10.0, "a")
  frames = list(video.prefetch(src.frames(), depth=2))
  assert [f.index for f in frames] == list(range(7)) and frames[0].image.shape == (48, 64, 3)
  with video.VideoWriter(str(tmp_path / "b.mp4"), 25.0) as w:
    for f in frames:
      w.write(f.image)
    w.write(cv2.resize(frames[0].image, (33, 21)))      # another size: resized
  back = list(video.open_source(str(tmp_path / "b.mp4")).frames())
  assert len(back) == 8 and back[-1].image.shape == (48, 64, 3)
  # Lossy codecs: the picture stays close.
  assert np.abs(back[3].image.astype(int) - frames[3].image).mean() < 40


def test_truncated_and_garbage_videos_name_the_frame(tmp_path):
  _write(tmp_path / "a.mp4", 20, movflags="faststart")
  data = (tmp_path / "a.mp4").read_bytes()
  (tmp_path / "t.mp4").write_bytes(data[:int(len(data) * 0.6)])
  got = []
  with pytest.raises(video.VideoError, match="frame") as e:
    for f in video.prefetch(video.open_source(str(tmp_path / "t.mp4")).frames()):
      got.append(f.index)
  assert e.value.frame == len(got) and 0 < len(got) < 20
  (tmp_path / "g.mp4").write_bytes(b"garbage" * 100)
  with pytest.raises(video.VideoError, match="cannot open video"):
    video.open_source(str(tmp_path / "g.mp4"))
  with pytest.raises(FileNotFoundError):
    video.open_source(str(tmp_path / "missing.mp4"))


def test_folder_and_posetrack_inputs(tmp_path):
  (tmp_path / "images/val/s").mkdir(parents=True)
  for i in range(3):
    cv2.imwrite(str(tmp_path / f"images/val/s/{i:06d}.jpg"), np.full((8, 8, 3), i * 50, np.uint8))
  src = video.open_source(str(tmp_path / "images/val/s"))
  assert src.kind == "folder" and src.files == ["000000.jpg", "000001.jpg", "000002.jpg"]
  (tmp_path / "annotations/val").mkdir(parents=True)
  ann = tmp_path / "annotations/val/s.json"
  ann.write_text(json.dumps({"images": [{"id": 7 + i, "file_name": f"images/val/s/{i:06d}.jpg"}
                                        for i in range(3)]}))
  src = video.open_source(str(ann))
  assert src.kind == "posetrack" and src.root == str(tmp_path)
  assert [f.image[0, 0, 0] for f in src.frames()] == pytest.approx([0, 50, 100], abs=3)
  with pytest.raises(FileNotFoundError, match="no images"):
    video.open_source(str(tmp_path / "annotations"))
