"""Use a pose model in your own code: `PoseEstimator` (load, call, draw).

  >>> from sbpose_jax import PoseEstimator
  >>> est = PoseEstimator.load("models/coco_res50")          # doctest: +SKIP
  >>> result = est("photo.jpg", boxes=[[120, 40, 180, 420]])  # doctest: +SKIP
  >>> result.keypoints.shape, result.scores.shape              # doctest: +SKIP
  ((1, 17, 2), (1, 17))
  >>> picture = est.draw("photo.jpg", result)                 # doctest: +SKIP

`load` takes a saved model (converted or trained), a training workdir, or a file written by
`python -m sbpose_jax.export` (StableHLO; ONNX too when onnxruntime is installed). Images are
RGB uint8 (H, W, 3) arrays or image file paths; boxes are person boxes x, y, w, h in pixels
(None: the whole image is one box). Crops are made exactly as `evaluate` makes them
(`geometry.box_to_center_scale` with the 2020 readers' float64 steps, `TopDownAffine`), so
the same box gives the same keypoints in both. Batches are padded to a few compiled sizes; the
flip test and 'default' decoding run on the device ('unbiased' / DARK on the host, as evaluate).
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from sbpose_jax import geometry, keypoints

log = logging.getLogger("sbpose_jax")
DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_INPUT_WH = (192, 256)


@dataclasses.dataclass(frozen=True)
class PoseResult:
  """The poses found in one image, one row per box.

  Attributes:
    keypoints: (N, K, 2) float32 joint x, y in image pixels.
    scores: (N, K) float32 joint confidences (heatmap maxima).
    instance_scores: (N,) float32 box score × mean joint score above `vis_thr` (the
      rescoring of evaluation; 0 when no joint passes).
    boxes: (N, 4) float64 the boxes x, y, w, h the poses were predicted in.
    center, scale: (N, 2) float32 the crops' centre and size / 200 px.
    box_index: (N,) which of the given boxes each row is (a box with no pixels in the image
      is skipped with a warning, so rows and given boxes can differ).
  """
  keypoints: np.ndarray
  scores: np.ndarray
  instance_scores: np.ndarray
  boxes: np.ndarray
  center: np.ndarray
  scale: np.ndarray
  box_index: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

  def __len__(self) -> int:
    return len(self.keypoints)

  def keypoints_xys(self) -> np.ndarray:
    """(N, K, 3) x, y, score: the layout of COCO results files and `visualize.draw_poses`."""
    return np.concatenate([self.keypoints, self.scores[..., None]], axis=-1)


def read_image(image) -> np.ndarray:
  """An RGB uint8 (H, W, 3) array from an array or an image file path (FileNotFoundError)."""
  if isinstance(image, (str, pathlib.Path)):
    # why: loads JAX and the model stack on use, so that --help answers at once
    from sbpose_jax.data import pipeline
    if not pathlib.Path(image).is_file():
      raise FileNotFoundError(f"image file not found: {image}")
    try:
      return pipeline.decode_image(str(image), "rgb")
    except pipeline.BadImageError as e:
      raise ValueError(str(e)) from None
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"image must be an (H, W, 3) uint8 RGB array or a path, got "
                     f"{image.dtype} {image.shape}")
  return image


MIN_BOX_SIDE = 1.0  # px: a smaller box has no pixels to crop


def box_problem(box, width: int, height: int) -> str | None:
  """Why a person box x, y, w, h cannot be cropped from a width x height image, or None.

  NaN/inf is not a reason to skip but an error (`check_finite`); a box smaller than a pixel or
  wholly outside the image has no pixels to crop (its pose would be made up from the padding).
  """
  x, y, w, h = (float(v) for v in box[:4])
  if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
    return f"smaller than {MIN_BOX_SIDE:g} px"
  if x >= width or y >= height or x + w <= 0 or y + h <= 0:
    return f"outside the {width}x{height} image"
  return None


def show_box(box) -> str:
  return "[" + ", ".join(f"{float(v):.4g}" for v in box[:4]) + "]"


def _boxes(boxes, image: np.ndarray, where: str = "image", skip: bool = True
           ) -> tuple[np.ndarray, np.ndarray]:
  """(the usable (M, 4) boxes, their (M,) indices among the given ones); None: the whole
  image. NaN/inf and wrong shapes are refused; an unusable box is skipped with a warning
  naming it (`skip`), or refused."""
  if boxes is None:
    return (np.asarray([[0.0, 0.0, image.shape[1], image.shape[0]]], np.float64),
            np.zeros(1, np.int64))
  try:
    out = np.asarray(boxes, np.float64)
  except (TypeError, ValueError):
    raise ValueError("boxes must be (N, 4) numbers x, y, w, h") from None
  if out.size == 0:
    return np.zeros((0, 4), np.float64), np.zeros(0, np.int64)
  if out.ndim == 1:
    out = out[None]
  if out.ndim != 2 or out.shape[1] != 4:
    raise ValueError(f"boxes must be (N, 4) x, y, w, h, got shape {np.shape(boxes)}")
  bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
  if len(bad):
    raise ValueError(f"box {int(bad[0])} {out[bad[0]].tolist()} holds NaN or inf "
                     f"({len(bad)} such box{'es' if len(bad) > 1 else ''})")
  keep = []
  for i, box in enumerate(out):
    why = box_problem(box, image.shape[1], image.shape[0])
    if why is None:
      keep.append(i)
    elif not skip:
      raise ValueError(f"{where}: box {i} [x, y, w, h] = {show_box(box)} is {why}: it has no "
                       "pixels to crop")
    else:
      log.warning("%s: skipping box %d [x, y, w, h] = %s: %s", where, i, show_box(box), why)
  keep = np.asarray(keep, np.int64)
  return out[keep].reshape(-1, 4), keep


def _legacy_test(path: pathlib.Path, meta, from_name: bool = True):
  """Test settings of a model saved before models recorded them: its workdir's config.json,
  else (`from_name`) "HxW" in its name (heatmap: the network's output), else None."""
  import json  # why: used by this function only
  from sbpose_jax import sizes
  from sbpose_jax.weights.meta import TestSettings
  for folder in (path, path.parent):
    cfg = folder / "config.json"
    if cfg.is_file():
      try:
        return TestSettings.from_config(json.loads(cfg.read_text()))
      except (ValueError, KeyError, TypeError):
        pass
  found = re.search(r"(\d{2,4})x(\d{2,4})", f"{meta.source} {path.name}")
  if found and from_name:
    wh = (int(found.group(2)), int(found.group(1)))
    return TestSettings(input_size=wh,
                        heatmap_size=sizes.network_output_wh(wh, meta.num_deconv_layers))
  return None


EXPORT_CHANGEABLE = ("padding", "vis_thr", "oks_thr")   # applied outside the exported function


def recorded_test(path, guess: bool = True):
  """(the model's own test settings or None, the fields a loader may change) of a saved model,
  a training workdir or an exported file: meta.json's `test`, the export's json, or (a model
  saved before models recorded them) its workdir's config.json, or (`guess`) the "HxW" in its
  name; the commands do not guess: a --config's values stand for an old model's."""
  # why: loads JAX and the model stack on use, so that --help answers at once
  from sbpose_jax.weights.meta import FIXED_BY_NETWORK, TEST_KEYS, TestSettings
  path = pathlib.Path(path)
  if path.is_file():
    from sbpose_jax import exporting  # why: loads the export reader on use only
    desc = exporting.read_sidecar(path)
    if "test" in desc:
      return TestSettings.from_dict(desc["test"], str(exporting.sidecar_path(path))), \
          EXPORT_CHANGEABLE
    return TestSettings(input_size=tuple(desc["input_size"]),
                        heatmap_size=tuple(desc["heatmap_size"]),
                        padding=desc["crop"]["padding"], flip=desc["flip_test"],
                        shift_heatmap=desc.get("shift_heatmap", True),
                        decode=desc["decode"]), EXPORT_CHANGEABLE
  from sbpose_jax.training import workdir  # why: JAX and orbax on use
  meta = workdir.read_meta(path)
  changeable = tuple(f for f in TEST_KEYS if f not in FIXED_BY_NETWORK)
  return (meta.test if meta.test is not None else _legacy_test(path, meta, guess)), changeable


def model_dataset(path) -> str:
  """The joint set of a saved model, workdir or exported file (its meta.json / json)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such saved model, workdir or exported file")
  if path.is_file():
    from sbpose_jax import exporting  # why: loads the export reader on use only
    return exporting.read_sidecar(path)["dataset"]
  from sbpose_jax.training import workdir  # why: JAX and orbax on use
  meta = workdir.read_meta(path)
  if meta.backbone_only or meta.num_joints == 0:
    raise ValueError(f"{path} is a backbone without a pose head; it cannot predict poses")
  return _dataset_of(meta, None)


def _check_dataset(cfg, path) -> None:
  """ValueError when the model's recorded joint set is not the config's (another joint order
  or flip pairs would give wrong poses without a word)."""
  path = pathlib.Path(path)
  if path.is_file():
    from sbpose_jax import exporting  # why: loads the export reader on use only
    dataset = exporting.read_sidecar(path)["dataset"]
  else:
    from sbpose_jax.training import workdir  # why: JAX and orbax on use
    dataset = workdir.read_meta(path).dataset
  wanted = cfg.data.dataset
  if not dataset or dataset == wanted:
    return
  mine, theirs = keypoints.get(dataset), keypoints.get(wanted)
  if mine.num_joints != theirs.num_joints:
    return     # the joint-count check that follows (saved_model.check_fits) says it
  if (tuple(mine.joint_names), tuple(mine.flip_index)) != (tuple(theirs.joint_names),
                                                            tuple(theirs.flip_index)):
    raise ValueError(f"{path} predicts the {mine.num_joints} joints of {dataset!r}, but config "
                     f"{cfg.get('name', '')} is for {wanted!r} (as many joints, in another "
                     "order or with other flip pairs); drop --config (the model's own is used) or "
                     f"give a config of {dataset!r}")


def apply_model_settings(cfg, path, explicit=(), where: str | None = None) -> list[str]:
  """Writes the model's own test settings into `cfg` (data.input_size, data.heatmap_size,
  data.padding, test.*) and returns the notes to print: what the model records wins over the
  config; a field in `explicit` (field -> the flag that set it in `cfg`) overrides it with a
  note, or is refused in one ValueError when it cannot work (`meta.resolve_test`)."""
  from sbpose_jax.weights import meta as meta_lib  # why: kept next to its one use
  _check_dataset(cfg, path)
  recorded, changeable = recorded_test(path, guess=False)
  settings, notes = meta_lib.resolve_test(recorded, cfg, explicit, where or str(path),
                                          changeable)
  for field, key in meta_lib.TEST_KEYS.items():
    section, name = key.split(".")
    value = getattr(settings, field)
    cfg[section][name] = tuple(value) if isinstance(value, tuple) else value
  return notes


def _as_config(test) -> dict:
  """A TestSettings as the {"data": ..., "test": ...} config fields that hold it."""
  from sbpose_jax.weights.meta import TEST_KEYS  # why: kept next to its one use
  out: dict = {"data": {}, "test": {}}
  for field, key in TEST_KEYS.items():
    section, name = key.split(".")
    out[section][name] = getattr(test, field)
  return out


def _dataset_of(meta, dataset: str | None) -> str:
  name = dataset or meta.dataset
  if not name:
    matches = [k for k, v in keypoints.DATASETS.items() if v.num_joints == meta.num_joints]
    if not matches:
      raise ValueError(f"the model predicts {meta.num_joints} joints, which no known dataset "
                       "has; pass dataset=...")
    name = "coco" if "coco" in matches else matches[0]
  info = keypoints.get(name)
  if info.num_joints != meta.num_joints:
    raise ValueError(f"the model predicts {meta.num_joints} joints but dataset {name!r} has "
                     f"{info.num_joints}")
  return name


class PoseEstimator:
  """Top-down pose estimation of person boxes: `est(image, boxes) -> PoseResult`.

  Example (a tiny model with constant weights, so it runs anywhere in seconds):

    >>> import numpy as np, jax, jax.numpy as jnp
    >>> from sbpose_jax import PoseEstimator, models
    >>> from sbpose_jax.weights import saved_model
    >>> net = models.PoseResNet(depth=18, num_joints=17, width=8, deconv_filters=(16,) * 3)
    >>> shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 64, 48, 3)))
    >>> variables = jax.tree.map(lambda s: np.full(s.shape, 0.01, np.float32), shapes)
    >>> meta = saved_model.ModelMeta(depth=18, num_joints=17, width=8,
    ...                              deconv_filters=(16,) * 3, dataset="coco")
    >>> est = PoseEstimator.from_variables(net, variables, meta, input_size=(48, 64),
    ...                                    batch_sizes=(2,))
    >>> image = np.zeros((120, 100, 3), np.uint8)
    >>> result = est(image, boxes=[[10, 10, 50, 90], [40, 5, 30, 60]])
    >>> result.keypoints.shape, result.scores.shape, result.instance_scores.shape
    ((2, 17, 2), (2, 17), (2,))
  """

  def __init__(self, backend: Callable[[dict], Any], *, dataset: str, input_wh: Sequence[int],
               data_order: str = "rgb", padding: float = 1.25,
               batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, vis_thr: float = 0.2,
               model=None, variables=None, settings=None, meta=None, description=None):
    """Most users call `load`. `backend(batch) -> (B, K, 3)` takes eval-style batches
    (`image` (B, H, W, 3) uint8 in `data_order`, `center`, `scale` (B, 2) float32)."""
    if not batch_sizes or min(batch_sizes) < 1:
      raise ValueError(f"batch_sizes must be positive, got {batch_sizes}")
    self.backend = backend
    self.dataset = dataset
    self.info = keypoints.get(dataset)
    self.input_wh = (int(input_wh[0]), int(input_wh[1]))
    self.data_order = data_order
    self.padding = float(padding)
    self.batch_sizes = tuple(sorted({int(b) for b in batch_sizes}))
    self.vis_thr = float(vis_thr)
    self.model, self.variables, self.settings, self.meta = model, variables, settings, meta
    self.description = description  # the export's json, for exported files

  # ------------------------------------------------------------------------------- loading

  @classmethod
  def load(cls, path, *, dataset: str | None = None, input_size: Sequence[int] | None = None,
           flip: bool | None = None, decode: str | None = None, dtype: str = "float32",
           batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, flag_names=None,
           **kwargs) -> "PoseEstimator":
    """A saved model or training workdir (directory), or an exported file.

    The model's own test settings (its meta.json's `test`: crop size, flip, decoding, shift,
    blur kernel, padding, thresholds; an export's json) are used unless an argument says
    otherwise: such an argument overrides them (logged as a note), except the crop size,
    which must be the model's (ValueError), and, for an exported file, what is inside it.

    Args:
      path: saved model directory, training workdir, or a `python -m sbpose_jax.export`
        file (.stablehlo or .onnx with its .json beside it).
      dataset: joint set (default: the model's meta.json; 17 joints → "coco").
      input_size: crop (W, H); only the model's own is accepted (a check).
      flip, decode: test-time flip and decoding ("default" or "unbiased"); None: the model's.
      dtype: compute dtype of a saved model ("float32": published numbers; "bfloat16").
      batch_sizes: compiled batch sizes; calls are padded up to one or split by the largest.
      flag_names: {field: name} how notes and errors name an argument (a command's flags).
      **kwargs: shift, blur_kernel, padding, vis_thr, oks_thr (None: the model's), data_order.
    """
    # why: loads JAX and the model stack on use, so that --help answers at once
    from sbpose_jax.weights import meta as meta_lib
    path = pathlib.Path(path)
    if not path.exists():
      raise FileNotFoundError(f"{path}: no such saved model, workdir or exported file")
    recorded, changeable = recorded_test(path)
    if recorded is None:
      recorded = meta_lib.TestSettings()
      log.warning("%s: crop size unknown (no recorded test settings, no training config, no "
                  "'HxW' in its name); using %dx%d (W x H): pass input_size=(W, H) if it "
                  "differs", path, *recorded.input_size)
      changeable = tuple(meta_lib.TEST_KEYS)
    given = dict(input_size=input_size, flip=flip, decode=decode,
                 shift_heatmap=kwargs.pop("shift", None),
                 blur_kernel=kwargs.pop("blur_kernel", None), padding=kwargs.pop("padding", None),
                 vis_thr=kwargs.pop("vis_thr", None), oks_thr=kwargs.pop("oks_thr", None))
    given = {k: (tuple(int(x) for x in v) if k == "input_size" else v)
             for k, v in given.items() if v is not None}
    if "input_size" in given and given["input_size"] != recorded.input_size:
      given["heatmap_size"] = tuple(int(v) for v in np.asarray(recorded.heatmap_size)
                                    * np.asarray(given["input_size"])
                                    // np.asarray(recorded.input_size))
    wanted = dataclasses.replace(recorded, **given)
    test, notes = meta_lib.resolve_test(
        recorded, _as_config(wanted),
        {k: (flag_names or {}).get(k, f"{'shift' if k == 'shift_heatmap' else k}=")
         for k in given}, str(path),
        changeable)
    for note in notes:
      log.info(note)
    if path.is_file():
      return cls._load_exported(path, batch_sizes=batch_sizes, padding=test.padding,
                                vis_thr=test.vis_thr, oks_thr=test.oks_thr, **kwargs)
    from sbpose_jax.weights import saved_model  # why: JAX on use
    from sbpose_jax.training import workdir  # why: JAX and orbax on use
    variables, meta = workdir.load_model(path)
    if meta.backbone_only or meta.num_joints == 0:
      raise ValueError(f"{path} is a backbone without a pose head; it cannot predict poses")
    model = saved_model.build_model(meta, dtype)
    return cls.from_variables(model, variables, meta, dataset=dataset,
                              input_size=test.input_size, heatmap_wh=test.heatmap_size,
                              flip=test.flip, shift=test.shift_heatmap, decode=test.decode,
                              blur_kernel=test.blur_kernel, padding=test.padding,
                              vis_thr=test.vis_thr, oks_thr=test.oks_thr,
                              batch_sizes=batch_sizes, **kwargs)

  @classmethod
  def from_variables(cls, model, variables, meta, *, input_size: Sequence[int],
                     dataset: str | None = None, flip: bool = True, shift: bool = True,
                     decode: str = "default", blur_kernel: int = 11, data_order: str = "rgb",
                     padding: float = 1.25, vis_thr: float = 0.2, oks_thr: float = 0.9,
                     batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                     heatmap_wh: Sequence[int] | None = None) -> "PoseEstimator":
    """An estimator of a flax `model` and its `variables` (meta: a `saved_model.ModelMeta`).

    `heatmap_wh` (the size heatmap coordinates are scaled from) defaults to the network's
    output size at `input_size`; configs state it as data.heatmap_size.
    """
    import jax  # why: loads JAX and the model stack on use, so that --help answers at once
    # why: loads JAX and the model stack on use, so that --help answers at once
    import jax.numpy as jnp
    from sbpose_jax.inference import pose as inference
    from sbpose_jax.weights.meta import TestSettings
    dataset = _dataset_of(meta, dataset)
    if decode not in ("default", "unbiased"):
      raise ValueError(f"decode must be 'default' or 'unbiased', got {decode!r}")
    w, h = (int(v) for v in input_size)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                         jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
    settings = inference.InferenceSettings(
        flip=bool(flip), shift=bool(shift), decode=decode, blur_kernel=int(blur_kernel),
        flip_index=tuple(int(i) for i in keypoints.get(dataset).flip_index),
        heatmap_wh=tuple(int(v) for v in heatmap_wh or (out.shape[2], out.shape[1])),
        data_order=data_order,
        model_order=meta.colour_order)
    backend = inference.make_predict_fn_from_settings(model, variables, settings)
    est = cls(backend, dataset=dataset, input_wh=(w, h), data_order=data_order,
              padding=padding, batch_sizes=batch_sizes, vis_thr=vis_thr, model=model,
              variables=variables, settings=settings, meta=meta)
    est.test = TestSettings(input_size=(w, h), heatmap_size=settings.heatmap_wh,
                            padding=float(padding), flip=bool(flip), shift_heatmap=bool(shift),
                            decode=decode, blur_kernel=int(blur_kernel),
                            vis_thr=float(vis_thr), oks_thr=float(oks_thr))
    return est

  @classmethod
  def from_config(cls, cfg, path, batch_sizes: Sequence[int] | None = None
                  ) -> "PoseEstimator":
    """What `evaluate`, `predict` and `track` use: a saved model, workdir or exported file
    run with cfg's test settings, crop size and colours (the commands first write the model's
    own settings into cfg: `apply_model_settings`); batches of exactly config.test.batch_size
    unless `batch_sizes` says otherwise."""
    t = cfg.test
    sizes = tuple(batch_sizes or (int(t.batch_size),))
    path = pathlib.Path(path)
    if path.is_file():
      est = cls._load_exported(path, batch_sizes=sizes, data_order=cfg.data.colour_order,
                               padding=cfg.data.padding, vis_thr=t.vis_thr, oks_thr=t.oks_thr)
      if keypoints.get(est.dataset).num_joints != keypoints.get(cfg.data.dataset).num_joints:
        raise ValueError(f"{path} predicts the {keypoints.get(est.dataset).num_joints} joints "
                         f"of {est.dataset!r}, not those of {cfg.data.dataset!r}")
      fixed = {"input_size": tuple(est.input_wh), "flip": est.test.flip,
               "decode": est.test.decode, "shift_heatmap": est.test.shift_heatmap}
      for field, value in fixed.items():
        key = "data.input_size" if field == "input_size" else f"test.{field}"
        asked = cfg.data.input_size if field == "input_size" else t[field]
        asked = tuple(asked) if field == "input_size" else asked
        if asked != value:
          raise ValueError(f"{path} was exported with {field} {value}, not {asked} ({key}); "
                           "export again with the setting you want")
      return est
    # why: loads JAX and the model stack on use, so that --help answers at once
    from sbpose_jax.weights import saved_model
    from sbpose_jax.training import workdir
    variables, meta = workdir.load_model(path)
    saved_model.check_fits(meta, cfg.data.dataset, path)
    model = saved_model.build_model(meta, cfg.model.dtype, cfg.model.deconv_impl)
    return cls.from_variables(
        model, variables, meta, input_size=cfg.data.input_size, dataset=cfg.data.dataset,
        flip=t.flip, shift=t.shift_heatmap, decode=t.decode, blur_kernel=t.blur_kernel,
        data_order=cfg.data.colour_order, padding=cfg.data.padding, vis_thr=t.vis_thr,
        oks_thr=t.oks_thr, batch_sizes=sizes, heatmap_wh=cfg.data.heatmap_size)

  @classmethod
  def _load_exported(cls, path: pathlib.Path, *, batch_sizes=DEFAULT_BATCH_SIZES,
                     data_order: str = "rgb", padding: float | None = None,
                     vis_thr: float | None = None, oks_thr: float | None = None
                     ) -> "PoseEstimator":
    # why: loads JAX and the model stack on use, so that --help answers at once
    from sbpose_jax import exporting
    run, desc = exporting.load_exported(path)
    recorded, _ = recorded_test(path)
    wh = np.asarray(desc["input_size"], np.float32)
    image_coords = desc["coords"] == "image"
    flip_channels = data_order != desc["input_colour_order"]

    def backend(batch):
      crops = np.asarray(batch["image"])
      crops = np.ascontiguousarray(crops[..., ::-1]) if flip_channels else crops
      center = np.asarray(batch["center"], np.float32)
      scale = np.asarray(batch["scale"], np.float32)
      xy, scores = run(crops, center, scale) if image_coords else run(crops)
      if not image_coords:  # crop pixels → image pixels (the crop spans scale·200 px)
        size = scale * np.float32(geometry.PIXEL_STD)
        xy = xy * (size / wh)[:, None] + (center - size * np.float32(0.5))[:, None]
      return np.concatenate([xy, scores[..., None]], axis=-1).astype(np.float32)
    test = dataclasses.replace(recorded, **{k: float(v) for k, v in dict(
        padding=padding, vis_thr=vis_thr, oks_thr=oks_thr).items() if v is not None})
    est = cls(backend, dataset=desc["dataset"], input_wh=desc["input_size"],
              data_order=data_order, padding=test.padding, batch_sizes=batch_sizes,
              vis_thr=test.vis_thr, description=desc)
    est.test = test
    return est

  # ----------------------------------------------------------------------------- predicting

  def crops(self, image: np.ndarray, boxes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crops (N, H, W, 3) uint8, center (N, 2), scale (N, 2)) of `boxes` in `image`.

    The numerics of evaluation records (float64 box and aspect ratio, the 2020 readers'
    /200) and of the evaluation pipeline's `TopDownAffine`.
    """
    # why: loads JAX and the model stack on use, so that --help answers at once
    from sbpose_jax.data import transforms
    boxes, _ = _boxes(boxes, image, skip=False)
    w, h = self.input_wh
    center, scale = geometry.box_to_center_scale(boxes, w / h, self.padding,
                                                 divide_in_float64=True)
    affine = transforms.TopDownAffine(self.input_wh)
    crops = [affine.map({"image": image, "center": c, "scale": s})["image"]
             for c, s in zip(center, scale)]
    crops = np.stack(crops) if crops else np.zeros((0, h, w, 3), np.uint8)
    return crops, center.reshape(-1, 2), scale.reshape(-1, 2)

  def _batch_size(self, n: int) -> int:
    return next((b for b in self.batch_sizes if b >= n), self.batch_sizes[-1])

  def predict_crops(self, crops: np.ndarray, center: np.ndarray, scale: np.ndarray
                    ) -> np.ndarray:
    """(N, K, 3) image x, y, score for crops made by `crops` (any N; padded per batch)."""
    n, k = len(crops), self.info.num_joints
    out = []
    start = 0
    while start < n:
      size = self._batch_size(n - start)
      stop = min(n, start + size)
      pad = size - (stop - start)
      take = np.r_[np.arange(start, stop), np.full(pad, stop - 1)]
      batch = {"image": crops[take], "center": np.asarray(center, np.float32)[take],
               "scale": np.asarray(scale, np.float32)[take]}
      out.append(np.asarray(self.backend(batch), np.float32)[:stop - start])
      start = stop
    return np.concatenate(out) if out else np.zeros((0, k, 3), np.float32)

  def __call__(self, image, boxes=None, box_scores=None) -> PoseResult:
    """Poses in one image.

    Args:
      image: (H, W, 3) uint8 RGB array, or an image file path.
      boxes: (N, 4) person boxes x, y, w, h in pixels; None: the whole image. A box with NaN
        or inf is refused (ValueError); one smaller than a pixel or outside the image is
        skipped with a warning naming it (`result.box_index` lists the boxes kept).
      box_scores: (N,) detector scores for `instance_scores` (default 1).
    """
    return self.predict_batch([image], [boxes], None if box_scores is None else [box_scores])[0]

  def predict_batch(self, images: Iterable, boxes: Sequence | None = None,
                    box_scores: Sequence | None = None) -> list[PoseResult]:
    """Poses in many images at once (the boxes of all images share batches).

    Args:
      images: sequence of (H, W, 3) uint8 RGB arrays or paths.
      boxes: one (N_i, 4) array (or None: whole image) per image; None: whole images.
      box_scores: one (N_i,) array per image, or None.
    """
    images = list(images)
    boxes = [None] * len(images) if boxes is None else list(boxes)
    if len(boxes) != len(images):
      raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
    parts, used = [], []
    for n, (image, b) in enumerate(zip(images, boxes)):
      where = str(image) if isinstance(image, (str, pathlib.Path)) else f"image {n}"
      image = read_image(image)
      used.append(_boxes(b, image, where))
      parts.append(self.crops(image, used[-1][0]))
    crops, center, scale = (np.concatenate([p[i] for p in parts]) for i in range(3))
    kpts = self.predict_crops(crops, center, scale)
    results, start = [], 0
    for i, (b, index) in enumerate(used):
      n = len(b)
      if box_scores is None or box_scores[i] is None:
        scores = np.ones(n)
      else:
        given = np.asarray(box_scores[i], np.float64).reshape(-1)
        if boxes[i] is not None and len(given) != len(np.asarray(boxes[i]).reshape(-1, 4)):
          raise ValueError(f"{len(given)} box scores for "
                           f"{len(np.asarray(boxes[i]).reshape(-1, 4))} boxes (image {i})")
        scores = given[index] if boxes[i] is not None else given.reshape(n)
      results.append(self._result(kpts[start:start + n], scores, b, center[start:start + n],
                                  scale[start:start + n], index))
      start += n
    return results

  def _result(self, kpts, box_scores, boxes, center, scale, index=None) -> PoseResult:
    # why: loads JAX and the model stack on use, so that --help answers at once
    from sbpose_jax.inference import postprocess
    inst = postprocess.rescore(kpts[..., 2], box_scores, self.vis_thr).astype(np.float32)
    return PoseResult(keypoints=kpts[..., :2].copy(), scores=kpts[..., 2].copy(),
                      instance_scores=inst, boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
                      center=center, scale=scale,
                      box_index=np.arange(len(kpts)) if index is None else np.asarray(index))

  def draw(self, image, result: PoseResult, kpt_thr: float = 0.05) -> np.ndarray:
    """A copy of `image` (RGB array or path) with `result`'s skeletons and boxes drawn (RGB)."""
    # why: loads JAX and the model stack on use, so that --help answers at once
    from sbpose_jax import visualize
    return visualize.draw_poses(read_image(image), result.keypoints_xys(), self.dataset,
                                boxes=result.boxes, scores=result.instance_scores,
                                kpt_thr=kpt_thr)
