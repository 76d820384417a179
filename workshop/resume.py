"""Resuming safely: the settings a resumed run must share, the checks of a checkpoint before it
is resumed, and one run at a time in an output folder (workshop/run.py and
workshop/output_folder.py call them)."""
import json
import os
import socket
import zipfile
from dataclasses import fields
from pathlib import Path

import transformers
from transformers import AutoConfig, TrainerState

from workshop.metrics import METRICS_FILE, SETTINGS_FILE, checkpoints, newest_checkpoint, read_json
from workshop.models import same_architecture
from workshop.settings import precision_of

LOCK_FILE = ".run-lock"  # one run at a time in an output folder
# Settings a resumed run must share with the run it continues (the rest may change).
RESUME_SETTINGS = ("model_name_or_path", "random_weights", "dataset_name_or_path", "train_samples",
                   "max_length", "pad_to_max_length", "fast_path", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "num_train_epochs", "max_steps", "learning_rate",
                   "weight_decay", "lr_scheduler_type", "warmup_steps", "seed", "optim",
                   "precision", "world_size", "zero_stage", "offload_optimizer", "offload_param")


def run_settings(args, training_args, deepspeed):
    """The settings that decide what a run computes (RESUME_SETTINGS), as a dict."""
    trainer = training_args.to_dict()
    values = {**vars(args), **trainer, "precision": precision_of(trainer),
              "world_size": training_args.world_size, "zero_stage": deepspeed.stage,
              "offload_optimizer": deepspeed.offload("optimizer"),
              "offload_param": deepspeed.offload("param")}
    return {k: values.get(k) for k in RESUME_SETTINGS}


def intact(path):
    """Whether a checkpoint file is whole: torch.save writes a zip archive (its directory is
    at the end); a safetensors file says in its header how long its data is."""
    try:
        if path.suffix == ".safetensors":
            header = int.from_bytes(path.open("rb").read(8), "little")
            offsets = json.loads(path.open("rb").read(8 + header)[8:])
            end = max((t["data_offsets"][1] for k, t in offsets.items() if k != "__metadata__"), default=0)
            return path.stat().st_size == 8 + header + end
        with zipfile.ZipFile(path):
            return True
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def check_checkpoint(folder, model_config, settings):
    """Refuse a checkpoint of another model, of the other kind (DeepSpeed's or the Trainer's),
    damaged, or of a run with other settings, naming the file and what to do."""
    what_to_do = (f"move {folder} aside to resume from the checkpoint before it, or choose "
                  f"another --output_dir")
    differ = same_architecture(AutoConfig.from_pretrained(folder), model_config)
    if differ:
        raise ValueError(f"{folder} holds a checkpoint of another model ({', '.join(differ)}: "
                         f"the checkpoint's / this run's); choose another --output_dir")
    deepspeed = settings["zero_stage"] is not None
    written_by_deepspeed = any(folder.glob("global_step*")) or (folder / "latest").is_file()
    if deepspeed and not written_by_deepspeed:
        raise ValueError(f"{folder} was written without DeepSpeed (no global_step* folder): resume "
                         f"it with the baseline stage, or choose another --output_dir")
    if not deepspeed and written_by_deepspeed:
        raise ValueError(f"{folder} was written by DeepSpeed (global_step* folder): resume it with "
                         f"the DeepSpeed stage and config that wrote it, or choose another --output_dir")
    if deepspeed and (folder / "latest").is_file():
        tag = (folder / "latest").read_text().strip()
        if not (folder / tag).is_dir():
            raise ValueError(f"{folder / tag} is missing (DeepSpeed's model and optimizer states): "
                             f"{what_to_do}")
    state = read_json(folder / "trainer_state.json")
    if not isinstance(state, dict):
        raise ValueError(f"{folder / 'trainer_state.json'} is damaged (cut short?): {what_to_do}")
    known = {f.name: f.default for f in fields(TrainerState)}
    unknown = sorted(set(state) - set(known))
    wrong = [f"{k} is {json.dumps(v)[:40]}" for k, v in state.items() if k in known and (
        k == "log_history" and not (isinstance(v, list) and all(isinstance(e, dict) for e in v))
        or type(known[k]) in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float))))]
    if wrong:
        raise ValueError(f"{folder / 'trainer_state.json'} is damaged ({'; '.join(wrong)}): {what_to_do}")
    if unknown:
        wrote = (read_json(folder / "config.json") or {}).get("transformers_version", "another version")
        raise ValueError(f"{folder / 'trainer_state.json'} has fields this transformers "
                         f"{transformers.__version__} does not know ({', '.join(unknown)}): transformers "
                         f"{wrote} wrote it; resume with that version (pip install "
                         f"transformers=={wrote}), or {what_to_do}")
    for path in [*folder.glob("*.safetensors"), *folder.glob("*.pt"), *folder.glob("*.pth"),
                 *folder.glob("global_step*/*.pt")]:
        if not intact(path):
            raise ValueError(f"{path} is damaged (cut short?): {what_to_do}")
    before = read_json(folder.parent / SETTINGS_FILE) or {}
    differ = [f"{k}={before.get(k)!r} then, {settings[k]!r} now" for k in RESUME_SETTINGS
              if k in before and before[k] != settings[k]]
    if differ:
        raise ValueError(f"{folder} continues a run with other settings ({'; '.join(differ)}): "
                         f"resume with the same settings, or choose another --output_dir")


def resume_point(output_dir, asked, model_config, settings):
    """The checkpoint to resume from, or None to start afresh.

    `asked` is --resume_from_checkpoint: a checkpoint folder (refused unless it can be resumed),
    True (the newest one, refused if there is none), or None: the newest complete checkpoint
    in output_dir, if any. Refuses, in one line naming what differs: a finished run, a
    checkpoint of another model, of the other kind, damaged, or of other settings. The Trainer
    writes trainer_state.json last, so a checkpoint without it was cut off (time limit,
    preemption): it is skipped, never deleted.
    """
    output_dir = Path(output_dir)
    metrics = output_dir / METRICS_FILE
    if (read_json(metrics) or {}).get("status") == "complete":
        raise ValueError(f"{output_dir} holds a finished run (its results: {metrics}): choose "
                         f"another --output_dir to train again")
    if asked not in (None, True, "True", "true"):
        folder = Path(asked)
        if (folder / METRICS_FILE).is_file():
            raise ValueError(f"--resume_from_checkpoint {asked} is a run's folder, not a "
                             f"checkpoint: give one of its checkpoint-N folders")
        check_checkpoint(folder, model_config, settings)
        return str(folder)
    newest = newest_checkpoint(output_dir)
    for folder in reversed(checkpoints(output_dir)):
        if folder == newest:
            check_checkpoint(folder, model_config, settings)
            return str(folder)
        print(f"skipping incomplete checkpoint {folder}")
    if asked is not None:
        raise ValueError(f"--resume_from_checkpoint {asked}: {output_dir} holds no complete "
                         f"checkpoint to resume from; leave the option out to start afresh")
    return None


def take_lock(output_dir):
    """Hold output_dir for this run: a file naming the host, process and job. A lock whose
    holder is gone (same host, process ended; or the same SLURM job, requeued) is taken over,
    and said so; a live holder's is refused in one line. Returns the lock's path."""
    lock = Path(output_dir) / LOCK_FILE
    me = dict(host=socket.gethostname(), pid=os.getpid(), job=os.environ.get("SLURM_JOB_ID"))
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            with open(lock, "x") as file:
                json.dump(me, file)
            return lock
        except FileExistsError:
            holder = read_json(lock) or {}
        except OSError as e:  # made but not written (a full disk): not a lock to leave behind
            lock.unlink(missing_ok=True)
            raise ValueError(f"--output_dir {output_dir}: {LOCK_FILE} cannot be written there "
                             f"({e.strerror}): free space there, or give another --output_dir") from None
        alive = holder.get("host") == me["host"] and _alive(holder.get("pid"))
        requeued = me["job"] is not None and holder.get("job") == me["job"]
        if alive and not requeued or holder.get("host") not in (None, me["host"]) and not requeued:
            raise ValueError(f"--output_dir {output_dir} is in use by another run (process "
                             f"{holder.get('pid')} on {holder.get('host')}"
                             f"{', job ' + holder['job'] if holder.get('job') else ''}): wait for "
                             f"it, or choose another --output_dir; if that run is gone, delete {lock}")
        print(f"taking over {lock} from a run that is gone (process {holder.get('pid')} on "
              f"{holder.get('host')})")
        lock.unlink(missing_ok=True)
    raise ValueError(f"{lock}: could not take it; delete it if no run uses {output_dir}")


def _alive(pid):
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False
