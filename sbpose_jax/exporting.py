"""Exported files: the test-time pipeline as one function, written as StableHLO or ONNX,
checked against JAX, described by a json beside the file, and loaded back.

The library half of `python -m sbpose_jax.export` (the command) that `api.PoseEstimator.load`
reads exported files with. What the exported function takes and returns: export.py.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Callable, Sequence

import numpy as np

FORMATS = ("stablehlo", "onnx")
COORDS = ("image", "crop")
CHECK_BATCHES = (1, 3, 17)
MAX_DX_PX = 1e-3
MAX_DSCORE = 1e-4
SIDECAR_VERSION = 1
INPUT_NAMES = ("crops", "center", "scale")
OUTPUT_NAMES = ("keypoints", "scores")
PLATFORMS = ("cpu", "cuda")   # StableHLO lowered for both: deployable on CPUs and NVIDIA GPUs


def sidecar_path(path) -> pathlib.Path:
  """`<file>.json`: the description written beside an exported file."""
  return pathlib.Path(f"{path}.json")


# ------------------------------------------------------------------------ the exported function

def keypoints_function(model, variables, settings, input_wh: Sequence[int], coords: str
                       ) -> Callable:
  """The test-time pipeline as one jnp function of uint8 crops.

  Args:
    model: a PoseResNet (the export uses `models.export_form(model)`, the same function).
    variables: {"params", "batch_stats"}; baked into the function as constants.
    settings: `inference.InferenceSettings` (flip, shift, decode, blur kernel, flip index,
      heatmap size, data_order = the crops' colour order, model_order = the weights').
    input_wh: (W, H) crop size.
    coords: "image" → fn(crops, center, scale); "crop" → fn(crops).
  Returns:
    fn(...) -> (keypoints (B, K, 2) float32, scores (B, K) float32).
  """
  # why: loads JAX and the model stack on use, so that --help answers at once
  import jax.numpy as jnp
  from sbpose_jax import heatmaps as heatmaps_lib
  from sbpose_jax.inference import pose as inference
  if coords not in COORDS:
    raise ValueError(f"coords must be one of {COORDS}, got {coords!r}")

  def apply_fn(x):
    return model.apply(variables, x, train=False)

  def decode(crops):
    hm = inference.predict_heatmaps(apply_fn, crops, settings)
    if settings.decode == "default":
      return heatmaps_lib.decode_default_jnp(hm)
    return heatmaps_lib.decode_unbiased_jnp(hm, settings.blur_kernel)

  if coords == "crop":
    unit = np.asarray(input_wh, np.float32) / np.asarray(settings.heatmap_wh, np.float32)

    def crop_fn(crops):
      xy, scores = decode(crops)
      return xy * jnp.asarray(unit), scores
    return crop_fn

  def image_fn(crops, center, scale):
    xy, scores = decode(crops)
    return heatmaps_lib.transform_preds_jnp(xy, center, scale, settings.heatmap_wh), scores
  return image_fn


def _arg_specs(input_wh, coords: str, batch):
  import jax  # why: loads JAX and the model stack on use, so that --help answers at once
  w, h = input_wh
  specs = [jax.ShapeDtypeStruct((batch, h, w, 3), np.uint8)]
  if coords == "image":
    specs += [jax.ShapeDtypeStruct((batch, 2), np.float32)] * 2
  return specs


def _need_flatbuffers() -> None:
  try:
    # why: jax.export needs it to serialise; checked here with its hint
    import flatbuffers  # noqa: F401
  except ImportError:
    raise ValueError("StableHLO (de)serialization needs the flatbuffers package: "
                     "pip install flatbuffers") from None


def to_stablehlo(fn, input_wh, coords: str, platforms: Sequence[str] = PLATFORMS) -> bytes:
  """Serialized `jax.export.Exported` of `fn` with a symbolic batch "B", lowered for each of
  `platforms` (the file then runs on any of them; lowering needs no such device here)."""
  import jax  # why: loads JAX and the model stack on use, so that --help answers at once
  _need_flatbuffers()
  batch, = jax.export.symbolic_shape("B")
  exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
      *_arg_specs(input_wh, coords, batch))
  return bytes(exported.serialize())


# jax2onnx 0.17.1 pins orbax-checkpoint below the version this package needs, so it is
# installed without its dependencies; the `export` extra brings what its conversion imports.
ONNX_INSTALL = ("pip install 'sbpose_jax[export]' && pip install --no-deps 'jax2onnx==0.17.1'")
ONNX_OPSET = 17            # the pose model's ONNX export
PIPELINE_MIN_OPSET = 18    # detector + pose: jax2onnx 0.17.1 writes BitwiseOr (opset 18)


def check_onnx_tools() -> None:
  """ValueError with the one command that installs them, unless ONNX export can run here."""
  import importlib.util  # why: a cheap presence check before anything is compiled
  missing = [m for m in ("jax2onnx", "onnx", "onnx_ir", "onnxruntime")
             if importlib.util.find_spec(m) is None]
  if missing:
    raise ValueError(f"ONNX export needs {', '.join(missing)}, not installed here; install with:"
                     f" {ONNX_INSTALL}")


def to_onnx(fn, input_wh, coords: str, opset: int = ONNX_OPSET) -> bytes:
  """ONNX model bytes of `fn` through jax2onnx, batch dimension "B"."""
  try:
    from jax2onnx import to_onnx as j2o  # why: optional: the export extra
  except ImportError as e:
    raise ValueError(f"ONNX export needs jax2onnx ({e}); install with: {ONNX_INSTALL}") from None
  specs = _arg_specs(input_wh, coords, "B")
  model = j2o(fn, specs, model_name="sbpose_jax", opset=opset,
              input_names=list(INPUT_NAMES[:len(specs)]), output_names=list(OUTPUT_NAMES))
  # jax2onnx 0.17 leaves NHWC shapes in value_info after moving convolutions to NCHW, which
  # onnxruntime's shape inference rejects ("Incompatible dimensions"); the graph itself is
  # right, and the declared inputs and outputs keep their shapes.
  del model.graph.value_info[:]
  return model.SerializeToString()


# ----------------------------------------------------------------------- running an exported file

def stablehlo_runner(data: bytes, where: str = "StableHLO file") -> Callable:
  """fn(*arrays) -> tuple of numpy arrays for serialized `jax.export` bytes."""
  import jax  # why: loads JAX and the model stack on use, so that --help answers at once
  _need_flatbuffers()
  try:
    exported = jax.export.deserialize(bytearray(data))
  except Exception as e:
    raise ValueError(f"{where}: not a serialized jax.export module ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''})") from None
  call = jax.jit(exported.call)

  def run(*arrays):
    return tuple(np.asarray(a) for a in call(*arrays))
  run.exported = exported
  return run


def onnx_runner(data: bytes, where: str = "ONNX file", threads: int = 0) -> Callable:
  """fn(*arrays) -> tuple of numpy arrays, run by onnxruntime on the CPU."""
  try:
    import onnxruntime as ort  # why: optional: the export extra
  except ImportError:
    raise ValueError("running ONNX files needs onnxruntime: pip install onnxruntime") from None
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = threads
  opts.log_severity_level = 3
  try:
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
  except Exception as e:
    raise ValueError(f"{where}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
  names = [i.name for i in session.get_inputs()]

  def run(*arrays):
    return tuple(session.run(None, dict(zip(names, arrays))))
  run.session = session
  return run


def runner(fmt: str, data: bytes, where: str) -> Callable:
  if fmt == "stablehlo":
    return stablehlo_runner(data, where)
  if fmt == "onnx":
    return onnx_runner(data, where)
  raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def check_crops(input_wh: Sequence[int], count: int, seed: int = 0) -> np.ndarray:
  """(count, H, W, 3) uint8 RGB crops of rendered people (data/synthetic), deterministic."""
  # why: loads JAX and the model stack on use, so that --help answers at once
  from sbpose_jax.data import synthetic
  rng = np.random.default_rng(seed)
  w, h = input_wh
  return np.stack([synthetic.render_image(rng, w, h)[0][..., ::-1] for _ in range(count)])


def check_args(crops: np.ndarray, coords: str, seed: int = 0) -> tuple[np.ndarray, ...]:
  """The exported function's arguments for `crops`: centre/scale of plausible boxes."""
  if coords == "crop":
    return (crops,)
  rng = np.random.default_rng(seed)
  b = len(crops)
  center = rng.uniform(50, 600, (b, 2)).astype(np.float32)
  scale = rng.uniform(0.3, 3.0, (b, 2)).astype(np.float32)
  return crops, center, scale


def compare(run_exported: Callable, reference: Callable, crops: np.ndarray, coords: str,
            batches: Sequence[int] = CHECK_BATCHES) -> dict:
  """Max differences of keypoints (in crop pixels) and scores over the given batch sizes.

  Image-space differences are divided by the crop's pixel size (scale·200 / W), so the limit
  is one number for every box size.
  """
  worst = {"max_dx_px": 0.0, "max_dscore": 0.0, "batches": list(batches)}
  for b in batches:
    args = check_args(np.resize(crops, (b,) + crops.shape[1:]), coords, seed=b)
    got = run_exported(*args)
    want = [np.asarray(a) for a in reference(*args)]
    dx = np.abs(np.asarray(got[0], np.float64) - want[0])
    if coords == "image":
      px = args[2].astype(np.float64) * 200.0 / crops.shape[2]
      dx = dx / px[:, None, :]
    worst["max_dx_px"] = max(worst["max_dx_px"], float(np.max(dx)))
    worst["max_dscore"] = max(worst["max_dscore"], float(np.max(np.abs(got[1] - want[1]))))
  return worst


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------- the sidecar

def describe(meta, settings, input_wh, dataset: str, fmt: str, coords: str, data: bytes,
             check: dict, opset: int | None, platforms: Sequence[str] = PLATFORMS,
             test=None) -> dict:
  """The json written beside the exported file: all a user of the file needs; `test`: the
  model's TestSettings exported (its thresholds apply outside the file)."""
  import jax  # why: loads JAX and the model stack on use, so that --help answers at once
  import sbpose_jax  # why: loads JAX and the model stack on use, so that --help answers at once
  # why: loads JAX and the model stack on use, so that --help answers at once
  from sbpose_jax import geometry, keypoints
  info = keypoints.get(dataset)
  w, h = (int(v) for v in input_wh)
  inputs = [{"name": "crops", "shape": ["B", h, w, 3], "dtype": "uint8",
             "meaning": "person crops, RGB (see crop)"}]
  if coords == "image":
    inputs += [{"name": "center", "shape": ["B", 2], "dtype": "float32",
                "meaning": "crop centre x, y in image pixels"},
               {"name": "scale", "shape": ["B", 2], "dtype": "float32",
                "meaning": "crop width, height in pixels / 200"}]
  where = "image pixels" if coords == "image" else "crop pixels"
  out = {
      "sidecar_version": SIDECAR_VERSION, "format": fmt, "coords": coords,
      "sha256": sha256(data), "file_bytes": len(data),
      "inputs": inputs,
      "outputs": [{"name": "keypoints", "shape": ["B", info.num_joints, 2], "dtype": "float32",
                   "meaning": f"joint x, y in {where} (pixel centres at integers)"},
                  {"name": "scores", "shape": ["B", info.num_joints], "dtype": "float32",
                   "meaning": "heatmap maximum per joint (confidence)"}],
      "input_size": [w, h], "heatmap_size": [int(v) for v in settings.heatmap_wh],
      "input_colour_order": settings.data_order, "model_colour_order": settings.model_order,
      "normalisation": {"inside": True, "mean": list(geometry.IMAGENET_MEAN_RGB),
                        "std": list(geometry.IMAGENET_STD_RGB),
                        "formula": "(x / 255 - mean) / std per channel index, in the model's "
                                   "colour order"},
      "flip_test": settings.flip, "shift_heatmap": settings.shift, "decode": settings.decode,
      "crop": {"padding": test.padding if test is not None else 1.25,
               "pixel_std": geometry.PIXEL_STD, "aspect_ratio": w / h,
               "rule": "box x, y, w, h -> centre (x + w/2, y + h/2); enlarge w or h to the "
                       "aspect ratio; scale = (w, h) * padding / pixel_std; crop = cv2.warpAffine"
                       " of the image with the 3-point affine of (centre, scale) to (W, H), "
                       "bilinear, zero border"},
      "dataset": dataset, "joint_names": list(info.joint_names),
      "flip_pairs": [list(p) for p in info.flip_pairs],
      "skeleton": [list(p) for p in info.skeleton],
      "architecture": json.loads(meta.to_json()),
      "check": check, "sbpose_jax_version": sbpose_jax.__version__, "jax_version": jax.__version__,
  }
  if test is not None:
    out["test"] = test.to_dict()
  if fmt == "onnx":
    out["onnx_opset"] = opset
  else:
    out["platforms"] = list(platforms)
  return out


def read_sidecar(path) -> dict:
  """The json beside an exported file (ValueError naming the file when absent or invalid)."""
  side = sidecar_path(path)
  if not side.is_file():
    raise FileNotFoundError(f"{side}: the description written beside {path} by "
                            "`python -m sbpose_jax.export` is missing")
  try:
    desc = json.loads(side.read_text())
    missing = [k for k in ("input_size", "format", "coords", "sha256", "joint_names", "crop",
                           "dataset", "input_colour_order") if k not in desc
               and desc.get("kind") != "pipeline"]
    if missing:
      raise KeyError(f"no {', '.join(missing)}")
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{side}: not a valid export description ({e})") from None
  if desc.get("kind") == "pipeline":
    raise ValueError(f"{path}: a detector + pose pipeline export (a picture in, not crops); "
                     f"run it with jax.export.deserialize or onnxruntime as {side} describes")
  return desc


def load_exported(path) -> tuple[Callable, dict]:
  """(run, description) of an exported file, refused unless it is the file its json describes.

  The file's sha256 must match the json's (a file of another model, or a damaged one, is
  refused before it is run), and for StableHLO the module's input and output shapes must be
  the described ones.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such exported model file")
  desc = read_sidecar(path)
  data = path.read_bytes()
  if sha256(data) != desc["sha256"]:
    raise ValueError(f"{path}: does not match {sidecar_path(path)} (sha256 differs): the file "
                     "was replaced by another export or damaged; export it again")
  run = runner(desc["format"], data, str(path))
  if desc["format"] == "stablehlo":
    w, h = desc["input_size"]
    k = len(desc["joint_names"])
    ins = [tuple(str(d) if not isinstance(d, int) else d for d in a.shape)
           for a in run.exported.in_avals]
    outs = [tuple(a.shape[1:]) for a in run.exported.out_avals]
    if ins[0][1:] != (h, w, 3) or outs != [(k, 2), (k,)]:
      raise ValueError(f"{path}: module takes {ins} and returns {outs}, but "
                       f"{sidecar_path(path)} describes {w}x{h} crops and {k} joints")
  return run, desc




# ------------------------------------------------------------------ detector + pose, one function

PIPELINE_OUTPUTS = ("boxes", "box_scores", "count", "keypoints", "scores")
PIPELINE_MAX_DPX = 1e-2    # boxes and keypoints, image pixels (float32 at 1080p: ~1e-4 relative)
# Scores: a keypoint score is read from a crop of a box; onnxruntime's float order moves a box
# by ~1e-4 px, which moved one keypoint score of a tiny random pose model by 1.4e-3 (96x176).
PIPELINE_MAX_DSCORE = 5e-3
def pipeline_function(detector, est, image_wh: Sequence[int], pose_model=None) -> Callable:
  """Detector + pose as one jnp function of one uint8 RGB image of size `image_wh` (W, H).

  Inside: the detector's resize keeping the aspect ratio (bilinear, half-pixel centres, no
  antialiasing, rounded to uint8: cv2 INTER_LINEAR's arithmetic but not its fixed-point weights,
  so a grey level can differ from `detection.prepare`'s) and padding with its pad value,
  `detection.detect_batch` (network, decoding, score threshold, top-k, NMS, max_per_img), a
  crop per box (x, y, w, h -> centre and scale as `geometry.box_to_center_scale`, warped on the
  device as cv2.warpAffine: data/device_warp.py), the pose network with its flip test and
  decoding (`keypoints_function`, image coordinates). M = the detector's max_per_img.

  fn(image (H, W, 3) uint8 RGB) -> (boxes (M, 4) x1 y1 x2 y2 float32, box_scores (M,),
  count () int32, keypoints (M, K, 2) image px, scores (M, K)); rows from `count` on are 0.
  `pose_model`: the pose network's export form (`models.export_form`) for ONNX.
  """
  # why: loads JAX and the model stack on use, so that --help answers at once
  import jax
  import jax.numpy as jnp
  from sbpose_jax import geometry
  from sbpose_jax.data import device_warp
  from sbpose_jax.inference import detection
  w, h = (int(v) for v in image_wh)
  s = detector.settings
  size = s.input_size
  new_h, new_w = detection.rescale_size((h, w), size)
  if new_h < 1 or new_w < 1:
    raise ValueError(f"a {h}x{w} image is {new_h}x{new_w} pixels at the detector's "
                     f"{size}x{size} input: too thin to detect people in")
  spec, det_vars = detector.spec, detector.variables
  pose_w, pose_h = est.input_wh
  aspect, padding = pose_w / pose_h, float(est.padding)
  keypoints_fn = keypoints_function(pose_model or est.model, est.variables, est.settings,
                                    est.input_wh, "image")
  valid_hw = np.array([[new_h, new_w]], np.int32)
  scale_factor = np.array([[new_w / w, new_h / h]], np.float64)

  def fn(image):
    x = image.astype(jnp.float32)
    if s.colour_order != "rgb":
      x = x[..., ::-1]
    resized = jax.image.resize(x, (new_h, new_w, 3), "linear", antialias=False)
    resized = jnp.clip(jnp.floor(resized + 0.5), 0, 255)
    padded = jnp.full((size, size, 3), float(s.pad_value), jnp.float32)
    padded = padded.at[:new_h, :new_w].set(resized).astype(jnp.uint8)
    boxes, box_scores, count = detection.detect_batch(det_vars, padded[None], valid_hw,
                                                      scale_factor, spec)
    boxes, box_scores, count = boxes[0], box_scores[0], count[0]
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    center = jnp.stack([boxes[:, 0] + bw * 0.5, boxes[:, 1] + bh * 0.5], -1)
    bw, bh = jnp.where(bw > aspect * bh, bw, bh * aspect), jnp.where(bw > aspect * bh,
                                                                   bw / aspect, bh)
    scale = jnp.stack([bw, bh], -1) / geometry.PIXEL_STD * padding
    # Rotation 0: output pixel -> image pixel is centre + (p - size / 2) * (scale·200 / W).
    unit = scale[:, 0] * geometry.PIXEL_STD / pose_w
    zeros = jnp.zeros_like(unit)
    inv = jnp.stack([jnp.stack([unit, zeros, center[:, 0] - unit * pose_w * 0.5], -1),
                     jnp.stack([zeros, unit, center[:, 1] - unit * pose_h * 0.5], -1)], 1)
    crops = device_warp.warp_affine(jnp.broadcast_to(image[None], (len(boxes),) + image.shape),
                                    inv, (pose_w, pose_h)).astype(jnp.uint8)
    xy, scores = keypoints_fn(crops, center.astype(jnp.float32), scale.astype(jnp.float32))
    live = jnp.arange(len(boxes)) < count
    return (boxes, box_scores, count, jnp.where(live[:, None, None], xy, 0.0),
            jnp.where(live[:, None], scores, 0.0))
  return fn


def pipeline_to_stablehlo(fn, image_wh, platforms: Sequence[str] = PLATFORMS) -> bytes:
  import jax  # why: loads JAX and the model stack on use, so that --help answers at once
  _need_flatbuffers()
  w, h = (int(v) for v in image_wh)
  exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
      jax.ShapeDtypeStruct((h, w, 3), np.uint8))
  return bytes(exported.serialize())


def pipeline_to_onnx(fn, image_wh, opset: int = PIPELINE_MIN_OPSET) -> bytes:
  """ONNX bytes through jax2onnx, or ValueError in one line when it cannot convert the
  pipeline. The network and the NMS are written in the forms it converts (models/cspnext.py
  `_same_max_pool`, inference/nms.py `nms_fixed`)."""
  try:
    from jax2onnx import to_onnx as j2o  # why: optional: the export extra
  except ImportError as e:
    raise ValueError(f"ONNX export needs jax2onnx ({e}); install with: {ONNX_INSTALL}") from None
  import jax  # why: the input's uint8 dtype, JAX's trace cache
  w, h = (int(v) for v in image_wh)
  # No traced program shared across the conversion: jax2onnx traces under patches of Flax's
  # layers, so a jitted function traced before would reach it as plain lax (the SPP pools as a
  # 4-D reduce_window, which onnxruntime cannot pool), and one traced under its patches would
  # not run afterwards (docs/ecosystem.md §7).
  jax.clear_caches()
  try:
    model = j2o(fn, [jax.ShapeDtypeStruct((h, w, 3), np.uint8)], model_name="sbpose_jax_pipeline",
                opset=opset, input_names=["image"], output_names=list(PIPELINE_OUTPUTS))
  except Exception as e:   # noqa: BLE001 - any converter failure is the same answer
    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise ValueError(f"jax2onnx cannot export the detector + pose pipeline ({type(e).__name__}: "
                     f"{first}); export it with --format stablehlo, or export the pose model "
                     "alone to ONNX and run the detector beside it") from None
  finally:
    jax.clear_caches()
  del model.graph.value_info[:]
  return model.SerializeToString()


def pipeline_check_images(image_wh, fixtures: Sequence[np.ndarray] = (), count: int = 3
                          ) -> list[np.ndarray]:
  """Images of size `image_wh` to check an export on: `fixtures` resized, else rendered
  synthetic people scaled up."""
  import cv2  # why: only the export check resizes pictures
  w, h = (int(v) for v in image_wh)
  out = [cv2.resize(np.asarray(f), (w, h), interpolation=cv2.INTER_AREA) for f in fixtures]
  if len(out) < count:
    rng = np.random.default_rng(0)
    # why: loads JAX and the model stack on use, so that --help answers at once
    from sbpose_jax.data import synthetic
    while len(out) < count:
      pic = synthetic.render_image(rng, 320, 240)[0][..., ::-1]
      out.append(cv2.resize(np.ascontiguousarray(pic), (w, h)))
  return out


def compare_pipeline(run_exported: Callable, expected, images) -> dict:
  """Max differences of the exported pipeline from JAX's outputs `expected` (one tuple per
  image of `images`): boxes and keypoints in image pixels, scores; the counts must be equal."""
  worst = {"max_dpx": 0.0, "max_dscore": 0.0, "same_count": True, "people": []}
  for img, want in zip(images, expected, strict=True):
    got = run_exported(img)
    want = [np.asarray(a) for a in want]
    n = int(want[2])
    worst["people"].append(n)
    if int(got[2]) != n:
      worst["same_count"] = False
      continue
    for i, key in ((0, "max_dpx"), (3, "max_dpx"), (1, "max_dscore"), (4, "max_dscore")):
      if n:
        d = float(np.max(np.abs(np.asarray(got[i], np.float64)[:n] - want[i][:n])))
        worst[key] = max(worst[key], d)
  return worst
