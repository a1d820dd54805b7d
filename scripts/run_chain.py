"""The whole chain on the synthetic clips, measured (docs/benchmarks.md, "The chain").

  python scripts/run_chain.py --detector runs/demo_det/model_best \
      --pose runs/demo_posetrack --out runs/chain [--clips 3] [--frames 100] [--det-every 1 5]

1. clips with known tracks (data/synthetic_video.py `generate_clips`, PoseTrack18 joints, a
   seed apart from the stills the models were trained on);
2. the detector's box AP on the clip frames (training/det_task.py `detect_images`, the
   evaluation's test time; its boxes are also written as COCO detection-results files, every
   N-th frame's with `--det-every N`, reusable with `track --boxes`);
3. `python -m sbpose_jax.track CLIP.json --similarity S` per clip with the ground truth's boxes
   (`--boxes`), and with the detector itself (`--detector D --det-every N`: the detector on every
   N-th frame, the tracker's flow-propagated boxes between), for each similarity;
4. `python -m sbpose_jax.evaluate --track` over the clips: poseval's AP (per joint group, total)
   of every joint, and MOTA, MOTP, precision, recall and ID switches of the joints the tracker
   writes (confidence >= the config's `track.write_kpt_thr`, or `--kpt-thr`; poseval counts
   every joint written in MOTA, and AP prefers them all), and of every joint.

Writes OUT/chain.json (every row) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import cv2

from sbpose_jax.commands import config as config_lib
from sbpose_jax.commands import evaluate as evaluate_cmd
from sbpose_jax.commands import track as track_cmd
from sbpose_jax.data import synthetic_video
from sbpose_jax.evaluators import coco_bbox
from sbpose_jax.evaluators import posetrack_mota
from sbpose_jax.models import rtmdet
from sbpose_jax.tracking import results
from sbpose_jax.training import det_task
from sbpose_jax.weights import rtmdet_conversion

SIMILARITIES = ("flow", "oks", "iou")


def clip_files(clips: pathlib.Path) -> list[pathlib.Path]:
  return sorted((clips / "annotations" / "val").glob("*.json"))


def detect_clips(detector: str, clips: pathlib.Path, out: pathlib.Path,
                 det_every: tuple[int, ...]) -> dict[int, dict[str, pathlib.Path]]:
  """Box files {N: {clip name: path}} of the detector on the clips' frames (every N-th frame)."""
  variables, meta = rtmdet_conversion.load_detector(detector)
  model = rtmdet.build(meta.arch, "float32")
  files: dict[int, dict[str, pathlib.Path]] = {n: {} for n in det_every}
  (out / "boxes").mkdir(parents=True, exist_ok=True)
  for gt_file in clip_files(clips):
    gt = json.loads(gt_file.read_text())
    images = sorted(gt["images"], key=lambda im: im["frame_id"])
    frames = [cv2.imread(str(clips / im["file_name"])) for im in images]
    found = det_task.detect_images(variables, model, meta.settings, frames)
    for n in det_every:
      results = [{"image_id": im["id"], "category_id": 1, "score": float(s),
                  "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                 for t, (im, (boxes, scores)) in enumerate(zip(images, found)) if t % n == 0
                 for b, s in zip(boxes, scores)]
      path = out / "boxes" / f"{gt_file.stem}_every{n}.json"
      path.write_text(json.dumps(results))
      files[n][gt_file.name] = path
  return files


def gt_boxes(clips: pathlib.Path, out: pathlib.Path) -> dict[str, pathlib.Path]:
  """The ground truth's boxes of every frame as box files (score 1)."""
  (out / "boxes").mkdir(parents=True, exist_ok=True)
  files = {}
  for gt_file in clip_files(clips):
    gt = json.loads(gt_file.read_text())
    results = [{"image_id": a["image_id"], "category_id": 1, "score": 1.0, "bbox": a["bbox"]}
               for a in gt["annotations"] if a.get("bbox") and a["bbox"][2] > 0]
    path = out / "boxes" / f"{gt_file.stem}_gt.json"
    path.write_text(json.dumps(results))
    files[gt_file.name] = path
  return files


def clip_box_ap(clips: pathlib.Path, box_files: dict[str, pathlib.Path], out: pathlib.Path
                ) -> dict[str, float]:
  """Box AP of the detector on the clip frames: the clips' GT boxes as one COCO file."""
  images, anns, results = [], [], []
  for gt_file in clip_files(clips):
    gt = json.loads(gt_file.read_text())
    images += [{"id": im["id"], "file_name": im["file_name"], "width": 0, "height": 0}
               for im in gt["images"]]
    anns += [{"id": len(anns) + i + 1, "image_id": a["image_id"], "category_id": 1,
              "bbox": a["bbox"], "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0}
             for i, a in enumerate(gt["annotations"]) if a.get("bbox") and a["bbox"][2] > 0]
    results += json.loads(box_files[gt_file.name].read_text())
  ann_file = out / "boxes" / "clips_gt_coco.json"
  ann_file.write_text(json.dumps({"images": images, "annotations": anns,
                                  "categories": [{"id": 1, "name": "person"}]}))
  ev = coco_bbox.CocoBoxEvaluator(ann_file=str(ann_file))
  ev.results = [dict(r, category_id=0) for r in results]
  return ev.compute()


def track_and_score(clips: pathlib.Path, pose: str, config: str, box_args,
                    similarity: str, out: pathlib.Path, overrides=(),
                    kpt_thr: float = 0.0) -> dict[str, float]:
  """track every clip with these boxes (`box_args(clip json)`: track's arguments) and this
  similarity, writing every joint, then evaluate --track: poseval's AP of every joint, and its
  tracking metrics (MOTA, MOTP, precision, recall, ID switches) of the joints of confidence
  >= `kpt_thr` (results.drop_joints: what `track` writes with `track.write_kpt_thr`). The
  row's `all/...` entries are the tracking metrics of every joint."""
  res = out / "results"
  res.mkdir(parents=True, exist_ok=True)
  t = time.perf_counter()
  frames = 0
  for gt_file in clip_files(clips):
    path, _ = track_cmd.main([str(gt_file), "--config", config, "--checkpoint", pose,
                              "--out-dir", str(res), *box_args(gt_file),
                              "--similarity", similarity, "--quiet", *overrides,
                              "--config.track.write_kpt_thr=0"])
    frames += len(json.loads(gt_file.read_text())["images"])
    target = res / gt_file.name
    if pathlib.Path(path) != target:
      pathlib.Path(path).rename(target)
  seconds = time.perf_counter() - t
  every = evaluate(clips, res, out / "eval")
  row = {k: v for k, v in every.items() if not k.startswith("track/")}
  row.update({f"all/{k}": v for k, v in every.items() if k.startswith("track/")})
  row["all/id_switches"] = id_switches(clips, res)
  row["id_switches"] = row["all/id_switches"]
  if kpt_thr > 0:
    confident = out / f"results_joints{kpt_thr:g}"
    confident.mkdir(exist_ok=True)
    for f in res.glob("*.json"):
      (confident / f.name).write_text(json.dumps(
          results.drop_joints(json.loads(f.read_text()), kpt_thr)))
    every = evaluate(clips, confident, out / f"eval_joints{kpt_thr:g}")
    row["id_switches"] = id_switches(clips, confident)
  row.update({k: v for k, v in every.items() if k.startswith("track/")})
  row["kpt_thr"] = kpt_thr
  row["frames_per_s"] = frames / seconds
  return row


def evaluate(clips: pathlib.Path, results_dir: pathlib.Path, out: pathlib.Path) -> dict:
  m = evaluate_cmd.main(["--config", "posetrack18_res50", "--results", str(results_dir),
                         "--track", "--out-dir", str(out), f"--config.data.root={clips}"])
  return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


def id_switches(clips: pathlib.Path, results: pathlib.Path) -> int:
  """ID switches over every clip and joint, as poseval counts them (posetrack_mota)."""
  seqs = []
  for gt_file in clip_files(clips):
    gt = posetrack_mota.parse_sequence(json.loads(gt_file.read_text()), str(gt_file),
                                       predictions=False)
    pr_file = results / gt_file.name
    pr = posetrack_mota.parse_sequence(json.loads(pr_file.read_text()), str(pr_file))
    seqs.append((gt, pr, str(gt_file)))
  return int(posetrack_mota.accumulate(seqs)["num_switches"].sum())


def run_chain(detector: str, pose: str, config: str, out, *, num_clips: int = 3,
              num_frames: int = 100, num_people: int = 4, seed: int = 1,
              frame_size=(320, 240), det_every=(1, 5), similarities=SIMILARITIES,
              overrides=(), kpt_thr: float | None = None) -> dict:
  """`kpt_thr` None: the config's `track.write_kpt_thr`."""
  out = pathlib.Path(out)
  if kpt_thr is None:
    kpt_thr = float(config_lib.load(config, list(overrides)).track.write_kpt_thr)
  clips = synthetic_video.ensure(out / "clips", "clips", num_clips={"val": num_clips}, seed=seed,
                                 frame_size=tuple(frame_size), num_frames=num_frames,
                                 num_people=num_people, keypoint_format="posetrack18")
  det = detect_clips(detector, clips, out, tuple(sorted(set((1,) + tuple(det_every)))))
  report = {"box_ap_clips": clip_box_ap(clips, det[1], out), "rows": []}
  gt = gt_boxes(clips, out)
  sources = [("gt", lambda f: ["--boxes", str(gt[f.name])])] + [
      (f"det every {n}", lambda f, n=n: ["--detector", detector, "--det-every", str(n)])
      for n in det_every]
  for name, box_args in sources:
    for sim in similarities:
      tag = f"{name.replace(' ', '')}_{sim}"
      row = track_and_score(clips, pose, config, box_args, sim, out / tag, overrides, kpt_thr)
      report["rows"].append({"boxes": name, "similarity": sim, **row})
      print(f"{name:>12} {sim:>5}: AP {row.get('Total', float('nan')):.1f} MOTA "
            f"{row.get('track/MOTA', float('nan')):.1f} MOTP {row.get('track/MOTP', 0):.1f} "
            f"IDsw {row['id_switches']} (every joint: MOTA "
            f"{row.get('all/track/MOTA', float('nan')):.1f})", flush=True)
  (out / "chain.json").write_text(json.dumps(report, indent=1))
  return report


def markdown(report: dict) -> str:
  thr = report["rows"][0].get("kpt_thr", 0.0) if report["rows"] else 0.0
  lines = ["| boxes | similarity | pose AP (poseval) | MOTA | MOTP | Prec | Rec | ID switches "
           "| MOTA, every joint |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in report["rows"]:
    lines.append(f"| {r['boxes']} | {r['similarity']} | {r.get('Total', float('nan')):.1f} | "
                 f"{r.get('track/MOTA', float('nan')):.1f} | {r.get('track/MOTP', 0):.1f} | "
                 f"{r.get('track/Prec', 0):.1f} | {r.get('track/Rec', 0):.1f} | "
                 f"{r['id_switches']} | {r.get('all/track/MOTA', float('nan')):.1f} |")
  if thr > 0:
    lines.append(f"\nMOTA to ID switches: the joints scored >= {thr:g}; AP and the last "
                 f"column: every joint.")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--detector", required=True, help="saved detector (a demo_det model)")
  p.add_argument("--pose", required=True, help="pose model or workdir (demo_posetrack)")
  p.add_argument("--config", default="demo_posetrack")
  p.add_argument("--out", required=True)
  p.add_argument("--clips", type=int, default=3)
  p.add_argument("--frames", type=int, default=100)
  p.add_argument("--people", type=int, default=4)
  p.add_argument("--det-every", type=int, nargs="+", default=[1, 5])
  p.add_argument("--similarity", nargs="+", default=list(SIMILARITIES))
  p.add_argument("--kpt-thr", type=float, default=None,
                 help="tracking metrics of the joints of confidence >= this (default: the "
                      "config's track.write_kpt_thr); AP: every joint")
  a = p.parse_args(argv)
  report = run_chain(a.detector, a.pose, a.config, a.out, num_clips=a.clips,
                     num_frames=a.frames, num_people=a.people, det_every=tuple(a.det_every),
                     similarities=tuple(a.similarity), kpt_thr=a.kpt_thr)
  print(f"box AP on the clip frames: {report['box_ap_clips']['AP']:.3f}")
  print(markdown(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
