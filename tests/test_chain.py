"""The chain in miniature (scripts/run_chain.py): a few training steps of the detector
(demo_det) and of the pose model (demo_posetrack), one short synthetic clip, the detector's
boxes (`track --detector --det-every 3`; its box AP on every frame) and the ground truth's
(`track --boxes`) with flow similarity (the others: tests/test_track.py), `evaluate --track`
of every joint and of the confident ones: the plumbing and the formats, not the figures
(docs/benchmarks.md has those)."""
from __future__ import annotations

import importlib.util
import json
import pathlib

from sbpose_jax.commands import config as config_lib
from sbpose_jax.training import loop
from sbpose_jax.weights import rtmdet_conversion

REPO = pathlib.Path(__file__).resolve().parents[1]
POSE = ("--config.model.width=8", "--config.model.deconv_filters=(8, 8, 8)",
        "--config.data.num_workers=0", "--config.batch_size_per_device=2",
        "--config.test.batch_size=4")
DET = ("--config.model.size=custom", "--config.model.widen_factor=0.125",
       "--config.data.input_size=64", "--config.data.crop_size=(0, 0)",
       "--config.batch_size_per_device=2",
       "--config.data.num_workers=0", "--config.test.batch_size=4",
       "--config.evals.val.every_epochs=0")


def _script():
  spec = importlib.util.spec_from_file_location("run_chain", REPO / "scripts" / "run_chain.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_chain_in_miniature(tmp_path):
  det_cfg = config_lib.load("demo_det", [
      f"--config.data.root={tmp_path / 'det_stills'}", "--config.synthetic.num_train=4",
      "--config.synthetic.num_val=2", "--config.synthetic.frame_size=(96, 64)",
      "--config.max_steps=2", *DET])
  loop.train_and_evaluate(det_cfg, tmp_path / "det", progress=False)
  pose_cfg = config_lib.load("demo_posetrack", [
      f"--config.data.root={tmp_path / 'pose_stills'}", "--config.synthetic.num_train=3",
      "--config.synthetic.num_val=2", "--config.synthetic.frame_size=(96, 64)",
      "--config.max_steps=2", *POSE])
  metrics = loop.train_and_evaluate(pose_cfg, tmp_path / "pose", progress=False)
  assert "AP" in metrics["val"]
  names = json.loads((tmp_path / "pose_stills/annotations/person_keypoints_train.json")
                     .read_text())["categories"][0]["keypoints"]
  assert names[1:3] == ["head_bottom", "head_top"]
  detector = tmp_path / "det" / "model_last"
  assert rtmdet_conversion.read_meta(detector).step == 2

  chain = _script()
  report = chain.run_chain(str(detector), str(tmp_path / "pose"), "demo_posetrack",
                           tmp_path / "chain", num_clips=1, num_frames=6, num_people=2,
                           frame_size=(96, 64), det_every=(3,), similarities=("flow",),
                           overrides=POSE)
  rows = report["rows"]
  assert [(r["boxes"], r["similarity"]) for r in rows] == [
      ("gt", "flow"), ("det every 3", "flow")]
  for r in rows:
    assert {"Total", "track/MOTA", "track/MOTP", "track/Prec", "track/Rec",
            "all/track/MOTA", "all/track/Prec"} <= set(r)
    assert isinstance(r["id_switches"], int) and r["id_switches"] >= 0
    assert r["kpt_thr"] == 0.8                  # demo_posetrack's track.write_kpt_thr
    # dropping unsure joints can only lose detections (each joint is matched on its own)
    assert r["track/Rec"] <= r["all/track/Rec"] + 1e-9
  # the ground truth's boxes with the ground truth's ids: every box file is a COCO results list
  # on the clip's image ids; every 3rd frame keeps its boxes
  gt = json.loads(next((tmp_path / "chain/clips/annotations/val").glob("*.json")).read_text())
  ids = [im["id"] for im in sorted(gt["images"], key=lambda im: im["frame_id"])]
  every3 = json.loads(next((tmp_path / "chain/boxes").glob("*_every3.json")).read_text())
  assert {b["image_id"] for b in every3} <= {ids[0], ids[3]}
  for b in every3:
    assert set(b) == {"image_id", "category_id", "score", "bbox"} and len(b["bbox"]) == 4
  assert set(report["box_ap_clips"]) >= {"AP", "AP50"}
  assert (tmp_path / "chain/chain.json").is_file()
  assert "| gt | flow |" in chain.markdown(report)
