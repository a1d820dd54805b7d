"""A training workdir: its layout, its config policy, and the models it keeps.

A workdir holds
  config.json        the run's config; another config is refused (`check_config`)
  .lock              flock of the run that writes it (lock.py, `WorkdirLock`)
  checkpoints/<step>/state/   training checkpoints (checkpoints.py, `TrainCheckpoints`)
  broken_checkpoints/<step>/  steps that failed to restore, moved aside (`restore_newest`)
  best.json          {"metric", "value", "step"} of `model_best`
  model_best/, model_last/   saved models (saved_model.py) for evaluate/predict

`load_model(path)` / `read_meta(path)` accept a saved model or a workdir (its model_best, else
model_last, else its latest training checkpoint): what evaluate and predict load.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Mapping

import jax
import ml_collections

from sbpose_jax.training.checkpoints import CHECKPOINT_DIR, latest_step, latest_variables
from sbpose_jax.weights import saved_model

CONFIG_FILE = "config.json"
BEST_FILE = "best.json"
MODEL_BEST = "model_best"
MODEL_LAST = "model_last"
# Fields that may change when a run resumes: they steer how the rest of the run is executed,
# scheduled and observed, not what the saved state means. The optimizer's state (Adam moments,
# step count) holds no learning rate, so the schedule (optim.*, epochs) may change; the data
# stream is a pure function of the step (resume rebuilds it at its position), so the worker
# count may change, and skipping unreadable images only changes batches that would fail.
# The per-device batch only splits the global batch over the devices: it may change with them.
OPERATIONAL_KEYS = ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "max_steps",
                    "epochs", "optim", "data.num_workers", "data.root", "data.skip_bad_images",
                    "data.val_ann", "data.val_images", "data.det_file", "data.use_gt_bbox",
                    "data.det_score_thr", "data.gt_mat_file", "data.val_gt_dir", "test",
                    "evals", "eval_at_start", "init_checkpoint", "batch_size_per_device",
                    "preemption_grace_s")
# Why the other fields may not change under saved checkpoints (first matching prefix wins).
REFUSAL_REASONS = (("model", "the saved parameters are of this network"),
                   ("global_batch_size", "the data stream, the step size and the schedule are "
                    "per global batch"),
                   ("bn_group_size", "the BatchNorm statistics are per group"),
                   ("seed", "the data order and augmentation are drawn from it"),
                   ("synthetic", "the training images would change"),
                   ("data", "the training samples would change"),
                   ("name", "it names another run"))



# ----------------------------------------------------------------------------- workdir config

def config_to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json(indent=1, sort_keys=True)


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _is_operational(key: str) -> bool:
  return any(key == k or key.startswith(k + ".") for k in OPERATIONAL_KEYS)


def config_differences(old: Mapping, new: Mapping, operational: bool = False) -> list[str]:
  """Keys (a.b.c) whose values differ between two config dicts: the others than
  OPERATIONAL_KEYS, or (`operational=True`) only those."""
  a, b = _flatten(old), _flatten(json.loads(json.dumps(dict(new))))
  keys = sorted(set(a) | set(b))
  return [k for k in keys if _is_operational(k) == operational and a.get(k, "<absent>") != b.get(
      k, "<absent>")]


def refusal_reason(key: str) -> str:
  for prefix, reason in REFUSAL_REASONS:
    if key == prefix or key.startswith(prefix + "."):
      return reason
  return "it changes what the checkpoints mean"


def _has_checkpoints(workdir: pathlib.Path) -> bool:
  ckpt_dir = workdir / CHECKPOINT_DIR
  return ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir())


def _stored_config(workdir: pathlib.Path) -> dict | None:
  path = workdir / CONFIG_FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); is {workdir} a training "
                     "workdir?") from None


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def _device_counts_phrase(global_batch: int) -> str:
  counts = _divisors(global_batch)
  shown = counts if len(counts) <= 12 else counts[:6] + ["..."] + counts[-3:]
  return ", ".join(map(str, shown))


def resolve_batch(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                  n_devices: int) -> tuple[ml_collections.ConfigDict, list[str]]:
  """The global batch of this run on `n_devices`, and the per-device batch that splits it.

  `global_batch_size` is the setting that counts (the data stream, the step size and the
  schedule are per global batch); `batch_size_per_device` x devices derives it when it is 0,
  and is derived from it when it is 0 itself. A workdir with checkpoints keeps its run's global
  batch when the run resumes on another number of devices (the same command, its per-device
  batch as stored, on other hosts): each device then takes global / devices rows, and a note
  says so. config.json keeps `batch_size_per_device` as given (so the same command is
  recognised on the next topology too) and the resolved `global_batch_size`.

  Returns:
    (a copy of `config` with `global_batch_size` set, notes to print); per device the run
    takes global_batch_size / n_devices rows.
  Raises:
    ValueError: in one line, when the global batch does not divide over the devices (naming the
      device counts that work), when both fields are set and disagree, or both are 0.
  """
  workdir = pathlib.Path(workdir)
  g = int(config.get("global_batch_size", 0) or 0)
  b = int(config.batch_size_per_device or 0)
  if g < 0 or b < 0:
    raise ValueError(f"global_batch_size ({g}) and batch_size_per_device ({b}) must be >= 0 "
                     "(0: derived from the other)")
  notes = []
  old = _stored_config(workdir) if _has_checkpoints(workdir) else None
  kept = int((old or {}).get("global_batch_size", 0) or 0)
  if kept and g == 0 and b in (0, int(old.get("batch_size_per_device", 0) or 0)):
    # The same command as the run that wrote the checkpoints, maybe on other devices.
    if kept % n_devices:
      raise ValueError(
          f"workdir {workdir} holds a run with a global batch of {kept}, which does not divide "
          f"over {n_devices} devices: resume it on a number of devices that divides {kept} "
          f"({_device_counts_phrase(kept)}), or use another --workdir")
    if b and b * n_devices != kept:
      notes.append(f"note: global batch {kept} of the workdir's run kept on {n_devices} "
                   f"devices: {kept // n_devices} per device (not batch_size_per_device={b})")
    g = kept
  if g == 0:
    if b == 0:
      raise ValueError("global_batch_size and batch_size_per_device are both 0: set one of "
                       "them (the other is derived)")
    g = b * n_devices
  elif g % n_devices:
    raise ValueError(
        f"global_batch_size {g} does not divide over {n_devices} devices: use a number of "
        f"devices that divides it ({_device_counts_phrase(g)}), or a global batch that is a "
        f"multiple of {n_devices} (e.g. {max(1, round(g / n_devices)) * n_devices})")
  elif b and b * n_devices != g and g != kept:
    raise ValueError(
        f"global_batch_size {g} and batch_size_per_device {b} disagree on {n_devices} devices "
        f"({b} x {n_devices} = {b * n_devices}): set one of them to 0 (derived from the other)")
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    config.global_batch_size = g
  return config, notes


def check_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> list[str]:
  """Stores the config in the workdir; refuses a workdir that holds another config's run.

  Fields in OPERATIONAL_KEYS may change between the runs of a workdir: config.json then takes
  the new values, and each change is returned as one line ("optim.lr: 0.002 -> 0.001") for the
  run to log.

  Raises:
    ValueError: naming the differing fields and why they may not change, when the workdir has
      checkpoints and its config.json differs from `config` outside OPERATIONAL_KEYS (without
      checkpoints the new config replaces it), or when it has checkpoints but no config.json.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / CONFIG_FILE
  new = json.loads(config_to_json(config))
  changes = []
  old = _stored_config(workdir)
  if old is not None:
    if "global_batch_size" not in old and "global_batch_size" in new:
      # Written before the setting existed: its runs resumed on the devices that wrote them.
      old["global_batch_size"] = new["global_batch_size"]
    diff = config_differences(old, new)
    flat_old, flat_new = _flatten(old), _flatten(new)
    if diff and _has_checkpoints(workdir):
      shown = "; ".join(f"{k}: {flat_old.get(k, '<absent>')!r} -> "
                        f"{flat_new.get(k, '<absent>')!r} ({refusal_reason(k)})"
                        for k in diff[:4])
      raise ValueError(
          f"workdir {workdir} holds a run of another config (config {old.get('name')!r}), "
          f"which may not change under its checkpoints: {shown}{' ...' if len(diff) > 4 else ''}"
          ". Use another --workdir, or delete this one to start over.")
    if not diff:
      changes = [f"{k}: {flat_old.get(k, '<absent>')!r} -> {flat_new.get(k, '<absent>')!r}"
                 for k in config_differences(old, new, operational=True)]
      if not changes:
        return []
    # Else a run that never checkpointed (e.g. stopped by a bad path): nothing to mix.
  elif (workdir / CHECKPOINT_DIR).exists() and any((workdir / CHECKPOINT_DIR).iterdir()):
    raise ValueError(f"workdir {workdir} has checkpoints but no {CONFIG_FILE}: refusing to mix "
                     "runs. Use another --workdir.")
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(config_to_json(config))
    os.replace(tmp, path)
  return changes




# ------------------------------------------------------------------ the models a run keeps

def model_meta(config, step: int, source: str = "") -> saved_model.ModelMeta:
  """The ModelMeta of `config`'s model (ConfigDict or config.json dict) at training `step`."""
  return saved_model.ModelMeta.from_config(
      config, step=int(step), source=source or f"sbpose_jax.train {config['name']} step {step}")


def read_best(workdir: str | os.PathLike) -> dict | None:
  """best.json: {"metric", "value", "step"} of model_best, or None."""
  path = pathlib.Path(workdir) / BEST_FILE
  return json.loads(path.read_text()) if path.exists() else None


def _write_best(workdir: pathlib.Path, metric: str, value: float, step: int) -> None:
  if jax.process_index() != 0:
    return
  path = workdir / BEST_FILE
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps({"metric": metric, "value": float(value), "step": int(step)}) + "\n")
  os.replace(tmp, path)


def save_if_best(workdir: str | os.PathLike, metric: str, score: float, variables: Mapping,
                 meta: saved_model.ModelMeta) -> bool:
  """Replaces model_best (and best.json) when `score` beats the recorded best (or re-does its
  step); every process calls it. Returns whether it saved."""
  workdir = pathlib.Path(workdir)
  best = read_best(workdir)
  if not math.isfinite(score) or not (best is None or score > best["value"] or (
      best["step"] == meta.step)):
    return False
  saved_model.save_model_atomic(workdir / MODEL_BEST, variables, meta)
  _write_best(workdir, metric, score, meta.step)
  return True


def save_last(workdir: str | os.PathLike, variables: Mapping,
              meta: saved_model.ModelMeta) -> None:
  """Replaces model_last; every process calls it."""
  saved_model.save_model_atomic(pathlib.Path(workdir) / MODEL_LAST, variables, meta)


def last_step(workdir: str | os.PathLike) -> int | None:
  """The training step of model_last, or None without one."""
  path = pathlib.Path(workdir) / MODEL_LAST
  if not saved_model.is_saved_model(path):
    return None
  # The "step" field of meta.json, whatever the model's kind (pose model or detector).
  return int(json.loads((path / saved_model.META_FILE).read_text()).get("step", 0))


# --------------------------------------------------------- a saved model or a workdir's model

def _model_dir(path: pathlib.Path) -> pathlib.Path | None:
  """The saved model at `path`, or the workdir `path`'s model_best, else model_last."""
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such saved model or workdir")
  for candidate in (path, path / MODEL_BEST, path / MODEL_LAST):
    if saved_model.is_saved_model(candidate):
      return candidate
  return None


def _checkpoint_meta(path: pathlib.Path, step: int) -> saved_model.ModelMeta | None:
  config_file = path / CONFIG_FILE
  if not config_file.exists():
    return None
  cfg = json.loads(config_file.read_text())
  return model_meta(cfg, step, f"sbpose_jax.train {cfg['name']} step {step} (training "
                               "checkpoint)")


def _no_model(path) -> ValueError:
  return ValueError(f"{path}: neither a saved model ({saved_model.META_FILE} + "
                    f"{saved_model.VARIABLES_DIR}/) nor a training workdir holding "
                    f"{MODEL_BEST}, {MODEL_LAST} or a training checkpoint")


def read_meta(path: str | os.PathLike) -> saved_model.ModelMeta:
  """The ModelMeta `load_model(path)` would return, without reading any variables."""
  path = pathlib.Path(path)
  directory = _model_dir(path)
  if directory is not None:
    return saved_model.read_meta(directory)
  step = latest_step(path)
  meta = _checkpoint_meta(path, step) if step is not None else None
  if meta is None:
    raise _no_model(path)
  return meta


def load_model(path: str | os.PathLike) -> tuple[dict, saved_model.ModelMeta]:
  """(variables, meta) of a saved model, or of a training workdir's model_best, else model_last,
  else (a run still in progress) its latest training checkpoint (meta from config.json)."""
  path = pathlib.Path(path)
  directory = _model_dir(path)
  if directory is not None:
    return saved_model.load_model(directory)
  found = latest_variables(path)
  meta = _checkpoint_meta(path, found[1]) if found is not None else None
  if meta is None:
    raise _no_model(path)
  return found[0], meta
