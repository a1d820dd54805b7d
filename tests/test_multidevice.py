"""The train step on 8 CPU devices equals 1 device; a 2-process jax.distributed run (gloo),
which then resumes past a damaged newest checkpoint.

Both run in subprocesses: the device count and jax.distributed must be set before JAX starts.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap


from sbpose_jax.data import synthetic

REPO = pathlib.Path(__file__).resolve().parent.parent

EIGHT_DEVICES = textwrap.dedent("""
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sbpose_jax.weights import saved_model
    from sbpose_jax.training import loop as training
    from sbpose_jax.training import state as ts
    assert jax.device_count() == 8
    model = saved_model.build_model(saved_model.ModelMeta(depth=18, num_joints=5, width=8,
                                                          deconv_filters=(8, 8, 8)))
    variables = jax.device_get(ts.init_variables(model, 0, (96, 96)))
    tx = optax.sgd(1.0)  # updates = gradients: compares them directly (see the docstring)
    rng = np.random.default_rng(0)
    batches = [dict(image=rng.integers(0, 256, (16, 96, 96, 3), dtype=np.uint8),
                    joints=np.concatenate([rng.uniform(0, 24, (16, 5, 2)),
                                           rng.integers(0, 2, (16, 5, 1))], -1
                                          ).astype(np.float32)) for _ in range(2)]
    out = {}
    for n in (1, 8):
      mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",))
      rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
      for group in (0, 2):
        settings = training.StepSettings(group, heatmap_wh=(24, 24), sigma=2.0)
        state = jax.device_put(ts.create_train_state(model, tx, jax.random.PRNGKey(0),
                                                     (96, 96), variables), rep)
        for b in batches:
          gb = training.to_global_batch(b, data, 16, keys=("image", "joints"))
          state, m = training.train_step(state, gb, model=model, settings=settings)
        assert len(gb["image"].sharding.device_set) == n
        assert state.params["conv1"]["kernel"].sharding.is_fully_replicated
        out[f"{n}_{group}"] = jax.device_get(
            dict(params=state.params, stats=state.batch_stats, loss=m["loss_sum"]))
    def diff(a, b, base=None):
      # Largest difference over all leaves, relative to the largest value (of the change from
      # `base`, if given) of the whole tree.
      if base is not None:
        a = jax.tree.map(lambda x, z: np.asarray(x, np.float64) - z, a, base)
        b = jax.tree.map(lambda x, z: np.asarray(x, np.float64) - z, b, base)
      num = max(jax.tree.leaves(jax.tree.map(
          lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)))
      den = max(jax.tree.leaves(jax.tree.map(lambda x: float(np.max(np.abs(x))), a)))
      return num / den
    init = variables["params"]
    print(json.dumps({f"g{g}": dict(params=diff(out[f"1_{g}"]["params"], out[f"8_{g}"]["params"],
                                                init),
                                    stats=diff(out[f"1_{g}"]["stats"], out[f"8_{g}"]["stats"]),
                                    loss=[float(out[f"1_{g}"]["loss"]),
                                          float(out[f"8_{g}"]["loss"])])
                      for g in (0, 2)} | {"groups_differ": diff(out["8_0"]["stats"],
                                                                out["8_2"]["stats"])}))
""")


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def test_eight_devices_equal_one_device():
  """Same global batch of 16 on 1 and 8 devices, 2 steps, fp32.

  SGD, so that the parameter change is the gradient itself: Adam's first steps move every
  weight by about +-lr whatever the gradient's size, so a near-zero gradient whose last bits
  differ between summation orders flips a whole step (seen: 1e-3 differences at lr 1e-3).
  Tolerances, relative to the largest value of the tree: parameter updates 1e-4, BatchNorm
  statistics 1e-5; loss 1e-5. Global BN (group 0) and groups of 2 (per-device statistics on 8
  devices) are both independent of the device count.
  """
  proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=_env(), cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  for g in ("g0", "g2"):
    assert r[g]["params"] < 1e-4, r
    assert r[g]["stats"] < 1e-5, r
    a, b = r[g]["loss"]
    assert abs(a - b) <= 1e-5 * abs(a), r
  assert r["groups_differ"] > 1e-4, r  # the two BatchNorm modes are not the same function


TWO_PROCESSES = textwrap.dedent("""
    import json, os, sys
    pid, port, root, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import numpy as np
    from sbpose_jax.commands import config as config_lib
    from sbpose_jax.commands import train
    from sbpose_jax.training import loop as training
    from sbpose_jax.data import pipeline, readers
    train.init_distributed(f"127.0.0.1:{port}", 2, pid)
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
    overrides = sys.argv[5:]
    cfg = config_lib.load("demo", overrides)
    records = readers.read_split(cfg.data, "train")
    it = iter(pipeline.train_dataset(records, cfg, batch_size=4, seed=int(cfg.seed),
                                     process_index=pid, process_count=2, host_targets=False,
                                     num_workers=0, extra_fields=("index",)))
    seen = [int(i) for i in next(it)["index"]]
    results, state = training.train_and_evaluate(cfg, workdir, progress=False, return_state=True)
    params = jax.tree.leaves(jax.device_get(state.params))
    digest = float(sum(np.sum(np.abs(p.astype(np.float64))) for p in params))
    # The evaluation loop alone: each process predicts its share of the boxes, all score all.
    from sbpose_jax import evaluators
    from sbpose_jax.inference import pose as inference
    from sbpose_jax.weights import saved_model
    from sbpose_jax.training import workdir as workdir_lib
    from sbpose_jax.training import checkpoints as checkpoints_lib
    from sbpose_jax.evaluators import loop
    ecfg, eval_type = config_lib.eval_config(cfg)
    val = readers.read_split(ecfg.data, "val")
    variables, meta = workdir_lib.load_model(workdir)
    predict = inference.make_predict_fn(saved_model.build_model(meta), variables, ecfg, meta)
    counted = []
    def counting(batch):
      counted.append(int(np.sum(batch["mask"])))
      return predict(batch)
    metrics = loop.run_evaluation(counting, val, ecfg, evaluators.EVALUATORS[eval_type](val, ecfg),
                                  batch_size=1, progress=False)
    # The newest checkpoint (step 3) damaged, the run extended to step 4: every process must
    # fall back to step 2 (the same step), process 0 alone moving step 3 aside.
    from jax.experimental import multihost_utils
    if pid == 0:
      os.remove(os.path.join(workdir, "checkpoints", "3", "state", "manifest.ocdbt"))
    multihost_utils.sync_global_devices("test: step 3 damaged")
    chosen = []
    restore_newest = checkpoints_lib.TrainCheckpoints.restore_newest
    def spy(self, *args, **kwargs):
      out = restore_newest(self, *args, **kwargs)
      chosen.append(out[1])
      return out
    checkpoints_lib.TrainCheckpoints.restore_newest = spy
    _, state2 = training.train_and_evaluate(config_lib.load("demo", overrides + [
        "--config.max_steps=4"]), workdir, progress=False, return_state=True)
    digest2 = float(sum(np.sum(np.abs(p.astype(np.float64)))
                        for p in jax.tree.leaves(jax.device_get(state2.params))))
    print(json.dumps(dict(pid=pid, seen=seen, digest=digest, step=int(state.step),
                          first=float(np.asarray(params[0]).ravel()[0]),
                          ap=results["val"]["AP"], boxes=len(val), predicted=sum(counted),
                          loop_metrics=metrics, resumed=chosen, step2=int(state2.step),
                          digest2=digest2)))
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_read_disjoint_shards_and_agree(tmp_path):
  root = tmp_path / "data"
  synthetic.ensure_synthetic(root, {"train": 6, "val": 3}, seed=3)
  overrides = [f"--config.data.root={root}", "--config.synthetic.num_train=6",
               "--config.synthetic.num_val=3", "--config.synthetic.seed=3",
               "--config.data.num_workers=0", "--config.batch_size_per_device=2",
               "--config.max_steps=3", "--config.checkpoint_every_steps=2",
               "--config.data.input_size=(96,96)", "--config.data.heatmap_size=(24,24)",
               "--config.model.deconv_filters=(8,8,8)", "--config.model.width=8",
               "--config.test.batch_size=4"]
  port = str(_free_port())
  # Output to files, not pipes: a process blocked on a full pipe that nobody reads yet (the
  # damaged restore's tensorstore noise) would stall the other at the next collective.
  logs = [(tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt") for i in range(2)]
  procs = []
  for i, (out, err) in enumerate(logs):
    with open(out, "w") as o, open(err, "w") as e:
      procs.append(subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, str(i), port,
                                     str(root), str(tmp_path / "run")] + overrides, env=_env(),
                                    cwd=REPO, stdout=o, stderr=e))
  outs = []
  for p, (out, err) in zip(procs, logs):
    p.wait(timeout=600)
    assert p.returncode == 0, err.read_text()[-3000:]
    outs.append(json.loads(out.read_text().strip().splitlines()[-1]))
  a, b = sorted(outs, key=lambda o: o["pid"])
  assert not set(a["seen"]) & set(b["seen"])          # disjoint shards of one permutation
  assert a["step"] == b["step"] == 3
  assert a["digest"] == b["digest"] and a["first"] == b["first"]   # identical parameters
  assert a["ap"] == b["ap"]
  # Evaluation splits the boxes: each process predicted a disjoint share, and both computed
  # the metrics of the whole set from the gathered predictions.
  assert a["predicted"] > 0 and b["predicted"] > 0
  assert a["predicted"] + b["predicted"] == a["boxes"] == b["boxes"]
  assert a["loop_metrics"] == b["loop_metrics"] and 0.0 <= a["loop_metrics"]["AP"] <= 1.0
  # Checkpoints hold the state only: each process rebuilds its data slice at the step.
  assert (tmp_path / "run" / "checkpoints" / "2" / "state").is_dir()
  assert (tmp_path / "run" / ".lock").exists()   # taken by process 0
  assert (tmp_path / "run" / "model_last" / "meta.json").exists()
  # Damaged newest checkpoint: both processes restored step 2, trained on to 4 in step.
  assert a["resumed"] == b["resumed"] == [2], (a, b)
  assert a["step2"] == b["step2"] == 4 and a["digest2"] == b["digest2"]
  assert (tmp_path / "run" / "broken_checkpoints" / "3" / "state").is_dir()
  assert not (tmp_path / "run" / "broken_checkpoints" / "3.1").exists()
