"""The train step on 8 CPU devices equals 1 device; a 2-process jax.distributed run (gloo),
which then resumes past a damaged newest checkpoint.

Both run in subprocesses: the device count and jax.distributed must be set before JAX starts.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest


from sbpose_jax.commands import config as config_lib
from sbpose_jax.data import readers, synthetic
from sbpose_jax.training import checkpoints as checkpoints_lib

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


# One process of a training run on any topology: argv = process id, processes, local devices,
# coordinator port, workdir, result file, then config overrides ("--no-evals" drops them). It
# records what the tests below check: each step's record indices (this process's rows of the
# global batch), the lock, the restored step, the evaluation's shares and gathers, the pictures.
TOPOLOGY_RUN = textwrap.dedent("""
    import json, os, sys
    pid, count, local, port, workdir, result = (int(sys.argv[1]), int(sys.argv[2]),
                                                int(sys.argv[3]), sys.argv[4], sys.argv[5],
                                                sys.argv[6])
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local}"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import numpy as np
    from jax.experimental import multihost_utils
    from sbpose_jax.commands import config as config_lib
    from sbpose_jax.commands import train
    from sbpose_jax.data import pipeline
    from sbpose_jax.evaluators import loop as eval_loop
    from sbpose_jax.training import checkpoints, lock, log
    from sbpose_jax.training import loop as training
    if count > 1:
      train.init_distributed(f"127.0.0.1:{port}", count, pid)
    assert (jax.process_count(), jax.local_device_count()) == (count, local)
    overrides = [a for a in sys.argv[7:] if a != "--no-evals"]
    cfg = config_lib.load("demo", overrides)
    if "--no-evals" in sys.argv:
      with cfg.unlocked():
        cfg.evals = type(cfg.evals)()
    record = dict(pid=pid, steps=[], predicted=0, gathers=0, pictures=[], locked=None,
                  restored=[])
    train_dataset = pipeline.train_dataset
    pipeline.train_dataset = lambda *a, **k: train_dataset(*a, **{**k, "extra_fields": ("index",)})
    to_global_batch = training.to_global_batch
    def recording_to_global_batch(local_batch, *a, **k):
      record["steps"].append([int(i) for i in local_batch["index"]])
      return to_global_batch(local_batch, *a, **k)
    training.to_global_batch = recording_to_global_batch
    predict_batches = eval_loop.predict_batches
    def counting_predict_batches(*a, **k):
      out = predict_batches(*a, **k)
      record["predicted"] += int(np.sum(out["mask"]))
      return out
    eval_loop.predict_batches = counting_predict_batches
    allgather = multihost_utils.process_allgather
    def counting_allgather(x, *a, **k):
      record["gathers"] += isinstance(x, dict) and "keypoints" in x
      return allgather(x, *a, **k)
    eval_loop.multihost_utils.process_allgather = counting_allgather
    enter = lock.WorkdirLock.__enter__
    def spying_enter(self):
      out = enter(self)
      record["locked"] = self._fd is not None
      return out
    lock.WorkdirLock.__enter__ = spying_enter
    restore_newest = checkpoints.TrainCheckpoints.restore_newest
    def spying_restore(self, *a, **k):
      out = restore_newest(self, *a, **k)
      record["restored"].append(out[1])
      return out
    checkpoints.TrainCheckpoints.restore_newest = spying_restore
    image = log.RunLogger.image
    def spying_image(self, *a, **k):
      out = image(self, *a, **k)
      record["pictures"].append(str(out) if out else None)
      return out
    log.RunLogger.image = spying_image
    results, state = training.train_and_evaluate(cfg, workdir, progress=False, return_state=True)
    record.update(step=int(state.step), results=results)
    if pid == 0:
      np.savez(result + ".npz", *[np.asarray(x, np.float64) for x in jax.tree.leaves(
          jax.device_get(dict(params=state.params, stats=state.batch_stats)))])
    with open(result, "w") as f:
      json.dump(record, f)
""")

TOPOLOGY_OVERRIDES = ["--config.synthetic.num_train=6", "--config.synthetic.num_val=3",
                      "--config.synthetic.seed=3", "--config.data.num_workers=0",
                      "--config.global_batch_size=4", "--config.batch_size_per_device=0",
                      "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=3",
                      "--config.log_every_steps=1", "--config.evals.val.every_epochs=0",
                      "--config.data.input_size=(64,64)", "--config.data.heatmap_size=(16,16)",
                      "--config.model.deconv_filters=(8,8,8)", "--config.model.width=8",
                      "--config.test.batch_size=1", "--config.test.flip=False"]


def _run_topology(tmp_path, name, count, local, workdir, steps, *extra):
  """Runs `count` processes of `local` devices each to step `steps`; their records."""
  start = time.monotonic()
  port = str(_free_port())
  root = tmp_path / "data"
  procs, files = [], []
  for pid in range(count):
    result = tmp_path / f"{name}_{pid}.json"
    out, err = tmp_path / f"{name}_{pid}.out", tmp_path / f"{name}_{pid}.err"
    with open(out, "w") as o, open(err, "w") as e:
      procs.append(subprocess.Popen(
          [sys.executable, "-c", TOPOLOGY_RUN, str(pid), str(count), str(local), port,
           str(workdir), str(result), f"--config.data.root={root}",
           f"--config.max_steps={steps}", *TOPOLOGY_OVERRIDES, *extra],
          env=_env(), cwd=REPO, stdout=o, stderr=e))
    files.append((result, out, err))
  records = []
  for p, (result, out, err) in zip(procs, files):
    p.wait(timeout=900)
    assert p.returncode == 0, f"{name}: " + err.read_text()[-3000:] + out.read_text()[-2000:]
    records.append(json.loads(result.read_text()))
  print(f"{name}: {time.monotonic() - start:.0f} s")
  return records, [out.read_text() for _, out, _ in files]


def _params(tmp_path, name):
  with np.load(tmp_path / f"{name}_0.json.npz") as f:
    return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def test_topology_changes_on_resume_end_as_an_uninterrupted_run(tmp_path):
  """2 processes x 2 devices to step 2, 1 x 4 to step 4, its step 4 damaged, then 4 x 1 (with
  an evaluation split over the processes) from step 3 to 6; against 1 process x 1 device from
  0 to 6 without a stop. Global batch 4 throughout: every step's batch is the same records in
  the same order, and the final state equals the uninterrupted run's to float tolerance."""
  synthetic.ensure_synthetic(tmp_path / "data", {"train": 6, "val": 3}, seed=3)
  work = tmp_path / "run"
  reference, _ = _run_topology(tmp_path, "reference", 1, 1, tmp_path / "reference", 6,
                               "--no-evals")
  batches = reference[0]["steps"]
  assert len(batches) == 6 and all(len(b) == 4 for b in batches)
  first, _ = _run_topology(tmp_path, "2x2", 2, 2, work, 2, "--no-evals")
  second, _ = _run_topology(tmp_path, "1x4", 1, 4, work, 4, "--no-evals")
  (work / "checkpoints" / "4" / "state" / "manifest.ocdbt").unlink()   # damage the newest
  tb_before = set((work / "tb").iterdir())
  third, outs = _run_topology(tmp_path, "4x1", 4, 1, work, 6)
  # The same global batches, each process its contiguous part of them.
  assert [a + b for a, b in zip(first[0]["steps"], first[1]["steps"])] == batches[:2]
  assert second[0]["steps"] == batches[2:4]
  assert [sum((r["steps"][i] for r in third), []) for i in range(3)] == batches[3:6]
  assert not set(third[0]["steps"][0]) & set(third[1]["steps"][0])   # disjoint shards
  # Resumed from each previous run; the damaged step 4 moved aside once, all on step 3.
  assert [r["restored"] for r in first] == [[], []] and second[0]["restored"] == [2]
  assert [r["restored"] for r in third] == [[3]] * 4
  assert "checkpoint step 4 cannot be restored" in outs[0]
  assert sorted(p.name for p in (work / "broken_checkpoints").iterdir()) == ["4"]
  # One lock holder, one writer of logs and pictures; the evaluation split and gathered once.
  assert [r["locked"] for r in third] == [True, False, False, False]
  assert len(set((work / "tb").iterdir()) - tb_before) == 1
  assert third[0]["pictures"] == [str(work / "samples" / "val_0000006.png")]
  assert all(r["pictures"] == [] for r in third[1:])
  assert [p.name for p in (work / "eval").iterdir()] == ["val_0000006"]
  ecfg, _ = config_lib.eval_config(config_lib.load("demo", [
      f"--config.data.root={tmp_path / 'data'}", *TOPOLOGY_OVERRIDES]))
  boxes = len(readers.read_split(ecfg.data, "val"))
  assert all(r["predicted"] > 0 for r in third), third        # each process its share
  assert sum(r["predicted"] for r in third) == boxes
  assert [r["gathers"] for r in third] == [1] * 4
  assert all(r["results"] == third[0]["results"] for r in third) and third[0]["results"]
  lines = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  steps = [(l["step"], l["kind"]) for l in lines]
  assert len(steps) == len(set(steps)) and (6, "eval/val") in steps
  assert all(r["step"] == 6 for r in third)
  # The final state against the uninterrupted run's.
  want, got = _params(tmp_path, "reference"), _params(tmp_path, "4x1")
  scale = max(float(np.max(np.abs(w))) for w in want)
  diff = max(float(np.max(np.abs(w - g))) for w, g in zip(want, got))
  print(f"largest difference {diff:.3g}, relative to the largest value {diff / scale:.3g}")
  assert diff / scale < 1e-5, (diff, scale)


@pytest.mark.parametrize("during", ["evaluation", "checkpoint_write"])
def test_two_processes_stop_at_the_same_step_on_sigterm(tmp_path, during):
  """The train command on 2 processes; SIGTERM to one of them (process 1 while both evaluate,
  process 0 while step 2's checkpoint is being written): JAX's preemption notice reaches both,
  they agree on a step, checkpoint it, and both exit 75 with the same line."""
  from test_reliability import SLOW_TRAIN  # why: the slow writes/evaluations of the 1-process tests
  root = tmp_path / "data"
  synthetic.ensure_synthetic(root, {"train": 6, "val": 3}, seed=3)
  work = tmp_path / "run"
  port = str(_free_port())
  overrides = [f"--config.data.root={root}", "--config.max_steps=400",
               *[o for o in TOPOLOGY_OVERRIDES if "checkpoint_every" not in o],
               "--config.checkpoint_every_steps=2"]
  env = dict(_env(), **({"TEST_SLOW_EVAL": "3"} if during == "evaluation" else
                        {"TEST_SLOW_WRITE": "3"}))
  if during == "evaluation":
    overrides.append("--config.evals.val.every_steps=4")
  procs = []
  for pid in range(2):
    command = [sys.executable, "-c", SLOW_TRAIN, "--config", "demo", "--workdir", str(work),
               "--no-progress", "--coordinator-address", f"127.0.0.1:{port}",
               "--num-processes", "2", "--process-id", str(pid), *overrides]
    out = subprocess.PIPE if pid == 0 else open(tmp_path / "out1.txt", "w")
    procs.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=out,
                                  stderr=subprocess.STDOUT, text=True))
  marker, target = (("evaluating", procs[1]) if during == "evaluation" else
                    ("writing checkpoint 2", procs[0]))
  seen = []
  for line in procs[0].stdout:
    seen.append(line)
    if line.startswith(marker):
      os.kill(target.pid, signal.SIGTERM)
      break
  outs = ["".join(seen) + procs[0].communicate(timeout=600)[0]]
  procs[1].wait(timeout=600)
  outs.append((tmp_path / "out1.txt").read_text())
  assert [p.returncode for p in procs] == [75, 75], outs
  lasts = [o.strip().splitlines()[-1] for o in outs]
  step = int(lasts[0].split("at step ")[1].split(":")[0])
  assert lasts == [f"preempted (the preemption notice) at step {step}: its checkpoint is "
                   f"written; re-running the same command resumes from step {step}"] * 2, outs
  assert checkpoints_lib.latest_step(work) == step
  if during == "evaluation":
    assert step == 4, outs   # the step being evaluated: the notice came before its end
  else:
    assert 2 in [int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()]
