"""The first stage of the two-stage detector demo: the `demo_det` detector at a low resolution.

  python -m sbpose_jax.train --config demo_det_stage1 --workdir runs/demo_det_stage1
  python -m sbpose_jax.train --config demo_det --workdir runs/demo_det \\
      --config.epochs=11 --config.init_checkpoint=runs/demo_det_stage1/model_last

The same model, stills and recipe as configs/demo_det.py, trained for 8 epochs on 128x128
crops of the stills at 0.6 scale (input 192: a third of the pixels of demo_det's 256x192
frames, ~2.5x the images per second), whose saved detector then starts demo_det's 11 epochs
at full resolution (a fresh schedule: warmup, flat, cosine). Progressive resizing: the coarse
stage learns the people's shapes cheaply, the fine stage their exact sides.

Measured on the 2-core build machine (docs/benchmarks.md, "Two stages"): box AP 0.711 (AP50
0.937, AP75 0.830) on demo_det's held-out stills, both commands in 9 min 29 s in an empty
directory (13 epochs: 0.718 in 9-10.5 min), where demo_det alone reaches 0.683-0.693 in the
same time. This stage alone: AP 0.549 in 2 min 43 s.
"""
from sbpose_jax.configs import demo_det


def get_config():
  c = demo_det.get_config()
  c.name = "demo_det_stage1"
  c.data.input_size = 192          # 0.6 scale: a 320x240 still fits a 192 x 192 input as 192x144
  c.data.crop_size = (128, 128)
  c.epochs = 8
  return c
