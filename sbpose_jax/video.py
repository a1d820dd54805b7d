"""Video in and out: frames from a video file, a folder of images or a PoseTrack18 annotation
file; decoding ahead of the model in a background thread; annotated mp4 output.

Video files are read with PyAV (`av`, FFmpeg in its wheel), so every container and codec FFmpeg
reads works (mp4, mkv, avi, mov, webm, ...). Frames are BGR uint8 (H, W, 3), as cv2 reads images.
A file that cannot be opened, or that breaks while decoding, raises `VideoError` naming the file
and the frame where it broke; frames before it have already been handed out.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import queue
import threading
from typing import Iterator

import cv2
import numpy as np

from sbpose_jax import outputs

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class VideoError(ValueError):
  """A video that cannot be opened or decoded; `frame` = index of the first bad frame."""

  def __init__(self, message: str, frame: int = 0):
    super().__init__(message)
    self.frame = frame


@dataclasses.dataclass
class Frame:
  index: int                     # 0-based position in the input
  name: str                      # image file name (relative), or frame_%06d.jpg for videos
  image: np.ndarray              # (H, W, 3) uint8 BGR


@dataclasses.dataclass
class Source:
  """An opened input: `frames()` yields Frame; `fps`, `num_frames` (0 if unknown), `name`."""
  path: str
  kind: str                      # video | folder | posetrack
  name: str
  fps: float
  num_frames: int
  files: list[str] = dataclasses.field(default_factory=list)    # folder / posetrack inputs
  root: str = ""
  images_meta: list[dict] = dataclasses.field(default_factory=list)  # posetrack `images`
  skip_bad: bool = False         # folder / posetrack: skip undecodable frames (else VideoError)
  skipped: list[str] = dataclasses.field(default_factory=list)      # the frames skipped

  def frames(self) -> Iterator[Frame]:
    if self.kind == "video":
      yield from _decode_video(self.path)
      return
    self.skipped.clear()
    for i, rel in enumerate(self.files):
      path = os.path.join(self.root, rel)
      img = decode_frame(path)
      if img is None:
        if not self.skip_bad:
          raise VideoError(f"cannot read frame {i} of {self.path}: {path} is missing or not a "
                           "decodable image (--skip-bad-frames skips such frames)", i)
        self.skipped.append(rel)
        continue
      yield Frame(i, rel, img)


def decode_frame(path: str) -> np.ndarray | None:
  """A BGR image file, or None when it is missing or cannot be decoded completely: OpenCV's
  imdecode refuses a truncated JPEG, which imread would return half grey with only libjpeg's
  "Premature end of JPEG file" on stderr (the API and `pack` read images the same way)."""
  try:
    buf = np.fromfile(path, np.uint8)
  except OSError:
    return None
  return cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None


def _decode_video(path: str) -> Iterator[Frame]:
  import av  # why: pyAV loads only when a video is read or written
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError) as e:
    raise VideoError(f"cannot open video {path}: {e}", 0) from e
  i = 0
  try:
    if not container.streams.video:
      raise VideoError(f"{path} has no video stream", 0)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
      for frame in container.decode(stream):
        yield Frame(i, f"frame_{i:06d}.jpg", frame.to_ndarray(format="bgr24"))
        i += 1
    except (av.FFmpegError, OSError, ValueError) as e:
      raise VideoError(f"video {path} broke at frame {i}: {e}", i) from e
    expected = stream.frames or 0
    if expected and i < expected:
      raise VideoError(f"video {path} ended at frame {i} of {expected} (truncated?)", i)
    if i == 0:
      raise VideoError(f"video {path} has no decodable frame", 0)
  finally:
    container.close()


def _posetrack_root(ann: pathlib.Path, rel: str) -> str:
  """PoseTrack file names are relative to the dataset root: the first parent that holds them."""
  for d in [ann.parent, *ann.parents]:
    if (d / rel).exists():
      return str(d)
  raise FileNotFoundError(f"frame {rel} of {ann} not found under any parent folder of it")


def open_source(path: str) -> Source:
  """A video file, a folder of images (sorted by name) or a PoseTrack18 annotation json."""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"input not found: {path}")
  if p.is_dir():
    files = sorted(f.name for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    if not files:
      raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {path}")
    return Source(str(p), "folder", p.name, 30.0, len(files), files, str(p))
  if p.suffix.lower() == ".json":
    try:
      data = json.loads(p.read_text())
      images = data["images"]
      files = [im["file_name"] for im in images]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{path} is not a PoseTrack18 annotation file (images[].file_name)") from e
    if not files:
      raise ValueError(f"{path} lists no images")
    root = _posetrack_root(p, files[0])
    return Source(str(p), "posetrack", p.stem, 30.0, len(files), files, root, images)
  import av  # why: pyAV loads only when a video is read or written
  try:
    with av.open(str(p)) as c:
      if not c.streams.video:
        raise VideoError(f"{path} has no video stream", 0)
      s = c.streams.video[0]
      fps = float(s.average_rate or s.guessed_rate or 30.0)
      n = int(s.frames or 0)
  except (av.FFmpegError, OSError) as e:
    raise VideoError(f"cannot open video {path}: {e}", 0) from e
  return Source(str(p), "video", p.stem, fps, n)


def prefetch(items: Iterator, depth: int = 8) -> Iterator:
  """Runs `items` in a background thread, `depth` ahead; re-raises its error where it happened.

  Decoding (FFmpeg, cv2.imread) releases the GIL, so it overlaps with the model.
  """
  q: queue.Queue = queue.Queue(maxsize=depth)
  done = object()
  stop = threading.Event()

  def work():
    try:
      for it in items:
        while not stop.is_set():
          try:
            q.put(it, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(done)
    except BaseException as e:
      q.put(e)

  th = threading.Thread(target=work, daemon=True, name="decode")
  th.start()
  try:
    while True:
      it = q.get()
      if it is done:
        return
      if isinstance(it, BaseException):
        raise it
      yield it
  finally:
    stop.set()


class VideoWriter:
  """H.264 (libx264, else MPEG-4) mp4 writer for BGR frames.

  The first frame sets the size (rounded down to even, as yuv420p needs); later frames of
  another size (a folder of mixed pictures) are resized to it. The file is written to
  `outputs.part_path(path)` and renamed to `path` by `close()`, once the mp4 is complete: a run
  stopped on the way (or killed) never leaves a half-written `path`, and an earlier run's file
  stays until the new one replaces it. `frames` counts the frames written.
  """

  def __init__(self, path: str, fps: float, codec: str | None = None):
    import av  # why: pyAV loads only when a video is read or written
    self.path = path
    self.frames = 0
    self.container = av.open(str(outputs.part_path(path)), mode="w", format="mp4")
    codec = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
    from fractions import Fraction  # why: pyAV loads only when a video is read or written
    self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    self.stream.pix_fmt = "yuv420p"
    self.size = None
    self._av = av

  def write(self, bgr: np.ndarray) -> None:
    if self.size is None:
      h, w = self.first_hw = bgr.shape[:2]
      self.size = (w - w % 2, h - h % 2)
      self.stream.width, self.stream.height = self.size
    if bgr.shape[:2] == self.first_hw:
      img = np.ascontiguousarray(bgr[:self.size[1], :self.size[0]])
    else:
      img = cv2.resize(bgr, self.size, interpolation=cv2.INTER_AREA)
    frame = self._av.VideoFrame.from_ndarray(img, format="bgr24")
    for packet in self.stream.encode(frame):
      self.container.mux(packet)
    self.frames += 1

  def close(self) -> None:
    """Finishes the mp4 and renames it into place (a video of no frame is not written)."""
    if self.container is None:
      return
    try:
      if self.frames:
        for packet in self.stream.encode():
          self.container.mux(packet)
    finally:
      self.container.close()
      self.container = None
    if self.frames:
      outputs.finish(self.path)
    else:
      outputs.part_path(self.path).unlink(missing_ok=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
