"""One accelerator run for the speed claims of issue 12; prints one JSON line per figure.

  scripts/bench_gpu.sh            # installs what is missing from .whl/, then runs both parts
  python scripts/bench_gpu.py --part jax|torch [--smoke] [--deadline UNIX_TIME]

Figures (`"figure"` key), in this order, each skipped (`"skipped": "time"`) once the deadline
is near so that the run ends in time:
  train_step    ResNet-50 + deconv head, 256x192, bf16, batch 64 and 256 per device, each
                deconvolution form (`model.deconv_impl` transpose / subpixel), device-resident
                batch (the step alone);
  torch_step    the same network and batch in PyTorch: eager fp32, AMP bf16 + channels_last,
                torch.compile + AMP (part `torch`, its own process so both frameworks do not
                share the GPU memory);
  end_to_end    the step fed by the grain pipeline, path full (decode + warp on the host),
                device_planes (packed 4:2:0 planes, colour + warp in the step: the recommended
                accelerator path), device (packed colour crops, warp in the step) and packed
                (packed crops, host warp), at 8 and 16 workers: img/s and host CPU ms per image
                (parent + workers);
  eval          boxes/s of the jitted predict function with the flip test (batch 64);
  detect        the person detector (RTMDet-m at 640, random weights, bf16) on a 1920x1080
                frame: host ms (resize + pad) and device ms (`detection.detect_batch`: network,
                decoding, NMS) per frame;
  pipeline      detector + pose per 1080p frame with 5 people, through the API
                (`PoseEstimator` with a detector: detect, 5 crops, ResNet-50 256x192 with the
                flip test, decoding): ms per frame, and the device ms of its two programs
                (detector; pose: the 5 crops padded to a batch of 8). The detector's weights
                are random, saved with score_thr 0 and max_per_img 5: five boxes per frame,
                as five people give
                (issue 22's goal on one H100: <= 3 ms of device time per frame).
Data: procedural people (data/synthetic.py) on 640x480 images, COCO-like sizes, packed with
`sbpose_jax.pack`; nothing is faked. `--smoke` shrinks everything (ResNet-18 of width 8, 96x96,
batch 2, 0/1 workers) so that the whole script runs on a CPU in about a minute (the test).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import numpy as np  # noqa: E402


def emit(**fields) -> None:
  print(json.dumps(fields), flush=True)


class Budget:
  """Skips figures once fewer than `need` seconds are left before the deadline."""

  def __init__(self, deadline: float):
    self.deadline = deadline

  def allows(self, figure: str, need: float, **fields) -> bool:
    if time.time() + need <= self.deadline:
      return True
    emit(figure=figure, skipped="time", **fields)
    return False


# ------------------------------------------------------------------------------------ PyTorch

def _torch_model(depth_blocks, width: int, num_joints: int = 17):
  """PoseResNet-50 in PyTorch (torchvision's Bottleneck layout, MSRA deconv head)."""
  import torch.nn as nn  # why: only this test or script needs it

  class Bottleneck(nn.Module):
    def __init__(self, cin, mid, stride):
      super().__init__()
      out = mid * 4
      self.body = nn.Sequential(
          nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
          nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid),
          nn.ReLU(inplace=True), nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out))
      self.down = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                   if stride != 1 or cin != out else nn.Identity())
      self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
      return self.relu(self.body(x) + self.down(x))

  layers = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
  cin = width
  for i, n in enumerate(depth_blocks):
    for j in range(n):
      layers.append(Bottleneck(cin, width * 2 ** i, 2 if (j == 0 and i > 0) else 1))
      cin = width * 2 ** i * 4
  head_c = 256 if width == 64 else 4 * width
  for _ in range(3):
    layers += [nn.ConvTranspose2d(cin, head_c, 4, 2, 1, bias=False), nn.BatchNorm2d(head_c),
               nn.ReLU(inplace=True)]
    cin = head_c
  layers.append(nn.Conv2d(cin, num_joints, 1))
  return nn.Sequential(*layers)


def torch_part(args, budget: Budget) -> None:
  import torch  # why: only this test or script needs it
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  emit(figure="header", part="torch", torch=torch.__version__, device=(
      torch.cuda.get_device_name(0) if dev == "cuda" else platform.processor() or "cpu"))
  h, w = args.input_hw
  for per_batch in args.batches:
    for mode in ("eager_fp32", "amp_bf16_channels_last", "compile_amp_bf16"):
      need = 90 if mode.startswith("compile") and not args.smoke else 15
      if not budget.allows("torch_step", need, mode=mode, batch=per_batch):
        continue
      torch.manual_seed(0)
      model = _torch_model(args.torch_blocks, args.width).to(dev)
      amp = mode != "eager_fp32"
      x = torch.randint(0, 256, (per_batch, 3, h, w), dtype=torch.uint8, device=dev)
      target = torch.rand(per_batch, 17, h // 4, w // 4, device=dev)
      if amp:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
      opt = torch.optim.Adam(model.parameters(), 5e-4)
      mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1) * 255
      std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1) * 255
      fwd = model
      if mode.startswith("compile"):
        fwd = torch.compile(model, backend="eager" if args.smoke else "inductor")

      def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
          out = fwd((x.float() - mean) / std)
        loss = ((out.float() - target) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

      t0 = time.perf_counter()
      for _ in range(1 + args.warmup):
        step()
      if dev == "cuda":
        torch.cuda.synchronize()
      warm_s = time.perf_counter() - t0
      t0 = time.perf_counter()
      for _ in range(args.steps):
        loss = step()
      float(loss.detach())
      dt = time.perf_counter() - t0
      emit(figure="torch_step", mode=mode, batch=per_batch,
           img_per_s=round(per_batch * args.steps / dt, 1),
           ms_per_step=round(1e3 * dt / args.steps, 2), warmup_s=round(warm_s, 1))


# ---------------------------------------------------------------------------------------- JAX

def _config(args, *extra):
  from sbpose_jax.commands import config as config_lib  # why: only this test or script needs it
  return config_lib.load("coco_res50", list(args.overrides) + list(extra))


def _settings(config, global_batch: int):
  from sbpose_jax.training import loop as training  # why: only this test or script needs it
  group = int(config.bn_group_size)
  d = config.data
  return training.StepSettings(0 if group >= global_batch else group, d.colour_order,
                            d.colour_order, tuple(int(v) for v in d.heatmap_size),
                            float(d.sigma), tuple(int(v) for v in d.input_size))


def _state(config):
  import jax  # why: only this test or script needs it
  from sbpose_jax import models  # why: only this test or script needs it
  from sbpose_jax.training import loop as training
  from sbpose_jax.training import state as ts  # why: only this test or script needs it
  model = models.build(config.model, 17)
  tx, _ = training.make_optimizer(config, 1000)
  hw = tuple(int(v) for v in config.data.input_size)[::-1]
  return model, ts.create_train_state(model, tx, jax.random.PRNGKey(0), hw)


def train_steps(args, budget: Budget) -> None:
  import bench_train  # why: only this test or script needs it
  for impl in ("transpose", "subpixel"):
    for per_device in args.batches:
      if budget.allows("train_step", 60 if not args.smoke else 5, deconv=impl,
                       batch=per_device):
        cfg = _config(args, f"--config.model.deconv_impl={impl}")
        out = bench_train.bench_step(cfg, 1, per_device, args.steps, args.warmup)
        emit(figure="train_step", deconv=impl, **out)


def make_data(args, tmp: pathlib.Path):
  """Synthetic people on 640x480 images, read as records and packed with sbpose_jax.pack."""
  from sbpose_jax.commands import pack as pack_lib  # why: only this test or script needs it
  from sbpose_jax.data import readers, synthetic  # why: only this test or script needs it
  t0 = time.perf_counter()
  root = synthetic.generate(tmp / "syn", {"train": args.num_images, "val": 2}, seed=0,
                            image_size=(640, 480))
  over = [f"--config.data.root={root}", "--config.data.train_ann="
          "annotations/person_keypoints_train.json", "--config.data.train_images=train"]
  args.overrides = list(args.overrides) + over
  cfg = _config(args)
  records = readers.read_split(cfg.data, "train")
  t1 = time.perf_counter()
  meta = pack_lib.write_pack(records, cfg, "train", tmp / "pack", progress_bar=False)
  t2 = time.perf_counter()
  pack_lib.write_pack(records, _config(args, "--config.data.pack_chroma=planes"), "train",
                      tmp / "pack_planes", progress_bar=False)
  emit(figure="data", images=args.num_images, instances=len(records),
       generate_s=round(t1 - t0, 1), pack_s=round(t2 - t1, 1),
       pack_planes_s=round(time.perf_counter() - t2, 1), pack_wh=meta["key"]["pack_wh"],
       cpus=os.cpu_count())
  return records, tmp / "pack"


def end_to_end(args, budget: Budget, records, pack_dir) -> None:
  import jax  # why: only this test or script needs it
  import bench_input  # why: only this test or script needs it
  from sbpose_jax.training import loop as training  # why: only this test or script needs it
  from sbpose_jax.data import packed, pipeline  # why: only this test or script needs it
  pipeline.prepare_multiprocessing()
  b = args.batches[0]
  virtual = records.select(np.arange(args.virtual_size) % len(records))
  # Most telling first: what the deadline cuts is the host-warp path.
  for path in ("full", "device_planes", "device", "packed"):
    for workers in args.workers:
      if not budget.allows("end_to_end", 45 if not args.smoke else 5, path=path,
                           workers=workers):
        continue
      planes = path == "device_planes"
      cfg = _config(args, f"--config.data.num_workers={workers}",
                    *(["--config.data.pack_chroma=planes"] if planes else []))
      model, state = _state(cfg)
      settings = _settings(cfg, b)
      if path == "full":
        ds = pipeline.train_dataset(virtual, cfg, batch_size=b, seed=0, host_targets=False)
      else:
        pack = packed.open_pack(pack_dir.with_name("pack_planes") if planes else pack_dir,
                                cfg)
        view = packed.Pack(pack.directory, "train", pack.records.select(
            np.arange(args.virtual_size) % len(pack)), bench_input._ModSource(  # noqa
                pack.source.data_source, args.virtual_size), pack.meta)
        on_device = path.startswith("device")
        ds = packed.train_dataset(view, cfg, on_device=on_device, batch_size=b, seed=0,
                                  host_targets=False)
      it = iter(ds)
      keys = ("image", "joints") + (("warp_matrix",) if path.startswith("device") else ())

      def step(state, it=it, keys=keys, model=model, settings=settings):
        local = next(it)
        return training.train_step(state, jax.device_put({k: local[k] for k in keys}),
                                model=model, settings=settings)

      for _ in range(1 + args.warmup):
        state, m = step(state)
      jax.block_until_ready(m)
      t0, c0 = time.perf_counter(), bench_input._cpu_seconds()  # noqa
      for _ in range(args.e2e_steps):
        state, m = step(state)
      jax.block_until_ready(m)
      dt, cpu = time.perf_counter() - t0, bench_input._cpu_seconds() - c0  # noqa
      if hasattr(it, "close"):
        it.close()
      n = b * args.e2e_steps
      emit(figure="end_to_end", path=path, workers=workers, batch=b,
           img_per_s=round(n / dt, 1), host_cpu_ms_per_img=round(1e3 * cpu / n, 3))


def evaluation(args, budget: Budget) -> None:
  import jax  # why: only this test or script needs it
  from sbpose_jax.inference import pose as inference  # why: only this test or script needs it
  if not budget.allows("eval", 40 if not args.smoke else 5):
    return
  cfg = _config(args)
  model, state = _state(cfg)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  predict = inference.make_predict_fn(model, variables, cfg)
  b = args.eval_batch
  w, h = cfg.data.input_size
  rng = np.random.default_rng(0)
  batch = dict(image=jax.device_put(rng.integers(0, 256, (b, h, w, 3), np.uint8)),
               center=np.full((b, 2), 300, np.float32), scale=np.full((b, 2), 1.5, np.float32))
  jax.block_until_ready(predict(batch))
  t0 = time.perf_counter()
  outs = [predict(batch) for _ in range(args.steps)]
  jax.block_until_ready(outs)
  emit(figure="eval", flip=bool(cfg.test.flip), batch=b,
       boxes_per_s=round(b * args.steps / (time.perf_counter() - t0), 1))


def _median_s(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2]


def detection_figures(args, budget: Budget) -> None:
  """The `detect` and `pipeline` figures (module docstring)."""
  # why: only this script needs them
  import dataclasses
  import jax
  import cv2
  from sbpose_jax import api
  from sbpose_jax.inference import detection
  from sbpose_jax.models import rtmdet
  from sbpose_jax.weights import rtmdet_conversion, saved_model
  if not budget.allows("detect", 60 if not args.smoke else 5):
    return
  arch = (dataclasses.replace(rtmdet.SIZES["nano"], widen_factor=0.125) if args.smoke
          else rtmdet.SIZES["m"])
  settings = dataclasses.replace(rtmdet.default_settings(arch, 1), score_thr=0.0,
                                 max_per_img=5, input_size=64 if args.smoke else 640)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda s: (rng.normal(0, 0.02, s.shape) + (1.0 if len(s.shape) == 1 else 0.0)
                 ).astype(np.float32), rtmdet_conversion.abstract_variables(arch))
  meta = rtmdet_conversion.DetectorMeta(arch=arch, settings=settings, source="bench")
  det_dtype = "float32" if args.smoke else "bfloat16"
  det = detection.Detector(variables, meta, det_dtype, batch_sizes=(1,))
  frame = cv2.resize(rng.integers(0, 256, (108, 192, 3), np.uint8), (1920, 1080))
  prepared = detection.prepare(frame, settings)
  dev = [jax.device_put(a[None]) for a in prepared]
  run = lambda: jax.block_until_ready(detection.detect_batch(det.variables, *dev, det.spec))
  run()
  repeats = 3 if args.smoke else 50
  host_s = _median_s(lambda: detection.prepare(frame, settings), repeats)
  device_s = _median_s(run, repeats)
  emit(figure="detect", model=f"RTMDet-{arch.size}", input=settings.input_size,
       frame="1920x1080", dtype=det_dtype, host_ms=round(1e3 * host_s, 2),
       device_ms=round(1e3 * device_s, 2))
  if not budget.allows("pipeline", 60 if not args.smoke else 5):
    return
  cfg = _config(args)
  w, h = (int(v) for v in cfg.data.input_size)
  pose_meta = saved_model.ModelMeta(depth=int(cfg.model.depth), width=int(cfg.model.width),
                                    num_joints=17, deconv_filters=tuple(cfg.model.deconv_filters),
                                    dataset="coco", colour_order="rgb", source="bench")
  pose_dtype = "float32" if args.smoke else "bfloat16"
  est = api.PoseEstimator.from_variables(
      saved_model.build_model(pose_meta, pose_dtype),
      saved_model.random_variables(pose_meta, (h, w), 0.5), pose_meta, input_size=(w, h),
      batch_sizes=(8,)).with_detector(det, score_thr=0.0)
  people = len(est(frame))
  per_frame = _median_s(lambda: est(frame), repeats)
  crops = est.crops(frame, np.tile([[100.0, 100.0, 300.0, 600.0]], (8, 1)))
  est.predict_crops(*crops)
  pose_s = _median_s(lambda: est.predict_crops(*crops), repeats)
  emit(figure="pipeline", detector=f"RTMDet-{arch.size}", pose=f"ResNet-{cfg.model.depth}",
       input=[w, h], flip=bool(est.settings.flip), frame="1920x1080", people=people,
       dtype=pose_dtype, ms_per_frame=round(1e3 * per_frame, 2),
       detector_device_ms=round(1e3 * device_s, 2),
       pose_ms_batch_8=round(1e3 * pose_s, 2))


def jax_part(args, budget: Budget) -> None:
  import jax  # why: only this test or script needs it
  from sbpose_jax.commands import train  # why: only this test or script needs it
  train.init_distributed(mode="off")
  emit(figure="header", part="jax", jax=jax.__version__, device=jax.devices()[0].device_kind,
       platform=jax.devices()[0].platform, cpus=os.cpu_count())
  train_steps(args, budget)
  with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
    records, pack_dir = make_data(args, pathlib.Path(tmp))
    end_to_end(args, budget, records, pack_dir)
  evaluation(args, budget)
  detection_figures(args, budget)


SMOKE = ["--config.model.depth=18", "--config.model.width=8",
         "--config.model.deconv_filters=(8,8,8)", "--config.model.dtype=float32",
         "--config.data.input_size=(96,96)", "--config.data.heatmap_size=(24,24)",
         "--config.bn_group_size=0", "--config.test.flip=True"]


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--part", choices=("jax", "torch"), required=True)
  p.add_argument("--smoke", action="store_true", help="tiny sizes: a CPU check of the script")
  p.add_argument("--deadline", type=float, default=0.0, help="UNIX time to end by")
  args, overrides = p.parse_known_args(argv)
  args.overrides = (SMOKE if args.smoke else []) + overrides
  args.batches = [2] if args.smoke else [64, 256]
  args.workers = [0, 1] if args.smoke else [8, 16]
  args.steps, args.warmup = (1, 1) if args.smoke else (20, 3)
  args.e2e_steps = 2 if args.smoke else 40
  args.num_images = 4 if args.smoke else 200
  args.virtual_size = 64 if args.smoke else 150_000
  args.eval_batch = 2 if args.smoke else 64
  args.input_hw = (96, 96) if args.smoke else (256, 192)
  args.width = 8 if args.smoke else 64
  args.torch_blocks = (1, 1, 1, 1) if args.smoke else (3, 4, 6, 3)
  budget = Budget(args.deadline or time.time() + 480)
  (jax_part if args.part == "jax" else torch_part)(args, budget)


if __name__ == "__main__":
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  main()
