"""run_metrics.json, written however the run ends (docs/metrics.md: its fields): what the run
was, what it did and where its time went; and the lines the README shows, printed last."""
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import psutil
import torch
from transformers import TrainerCallback

from workshop.callbacks import gather
from workshop.metrics import METRICS_FILE, SCHEMA_VERSION, summary_lines
from workshop.models import describe


class MetricsFile(TrainerCallback):
    """The run's record: what train.py and the Trainer tell it (the model and the Trainer's state
    as the Trainer starts, the answers after training), with the run's clock and checkpoints."""

    def __init__(self, args, training_args, deepspeed, settings, clock, checkpoints, data,
                 validation_in_train):
        self.args, self.training_args, self.deepspeed, self.settings = args, training_args, deepspeed, settings
        self.clock, self.checkpoints, self.data = clock, checkpoints, data
        self.validation_in_train = validation_in_train
        self.model = self.state = self.answers_after = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self.model, self.state = model, state

    def on_train_begin(self, args, state, control, **kwargs):
        self.state = state

    def metrics(self, ending):
        """The metrics dict (docs/metrics.md). Per-rank values are gathered from every rank only
        after a successful run: after a failure the other ranks may be gone."""
        args, targs, state, ds = self.args, self.training_args, self.state, self.deepspeed
        per_rank = gather if ending.status in ("complete", "stopped_on_request") else (lambda v: [v])
        history = state.log_history
        train = next((e for e in reversed(history) if "train_loss" in e), {})
        before = next((e["answer_quality_before"] for e in history if "answer_quality_before" in e), None)
        epochs = epoch_table(history)
        samples_per_step = (targs.per_device_train_batch_size * targs.gradient_accumulation_steps
                            * targs.world_size)
        parts, wall = self.clock.parts()
        config = self.model.config
        cuda = torch.cuda.is_available() and not targs.use_cpu
        return dict(
            schema_version=SCHEMA_VERSION,
            status=ending.status, error=ending.error,
            stopped_on_request_at_step=self.checkpoints.stopped_at,
            stage=Path(sys.argv[0]).resolve().parent.name,
            model=args.model_name_or_path, random_weights=args.random_weights,
            parameters=sum(getattr(p, "ds_numel", p.numel()) for p in self.model.parameters()),
            architecture=describe(config),
            dataset=args.dataset_name_or_path,
            train_samples=args.train_samples, eval_samples=args.eval_samples,
            max_length=args.max_length, pad_to_max_length=args.pad_to_max_length,
            shortened_contexts=self.data.shortened,
            validation_rows_in_train=self.validation_in_train,
            longest_sequence_tokens=self.data.longest,
            fast_path=args.fast_path, compile_blocks=args.compile_blocks,
            length_multiple=None if args.pad_to_max_length else args.length_multiple,
            save_model=args.save_model,
            gradient_checkpointing=bool(targs.gradient_checkpointing),
            precision=self.settings["precision"],
            per_device_train_batch_size=targs.per_device_train_batch_size,
            gradient_accumulation_steps=targs.gradient_accumulation_steps,
            world_size=self.settings["world_size"],
            nodes=int(os.environ.get("SLURM_NNODES", 1)),
            deepspeed_config=targs.deepspeed,
            zero_stage=ds.stage,
            offload_optimizer=ds.offload("optimizer"), offload_param=ds.offload("param"),
            pin_memory=ds.pin_memory,
            epochs=epochs,
            steps_per_epoch=epochs[0]["steps"] if epochs else None,
            global_step=state.global_step, max_steps=state.max_steps,
            train_loss=train.get("train_loss"), train_runtime=train.get("train_runtime"),
            train_samples_per_second=train.get("train_samples_per_second"),
            steady_train_samples_per_second=(
                self.clock.steady_steps * samples_per_step / self.clock.steady_seconds
                if self.clock.steady_seconds else None),
            compiling_steps=self.clock.compiling_steps,  # left out of the steady speed
            eval_samples_per_second=(sum(e["eval_samples_per_second"] for e in epochs) / len(epochs)
                                     if epochs else None),
            answer_quality=dict(before=before, after=self.answers_after) if args.answer_quality else None,
            peak_gpu_memory_allocated_mib=per_rank(
                torch.cuda.max_memory_allocated() / 2**20 if cuda else None),
            peak_host_rss_mib=per_rank(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            gpu=torch.cuda.get_device_name() if cuda else None,
            gpu_memory_mib=torch.cuda.get_device_properties(0).total_memory / 2**20 if cuda else None,
            host_memory_mib=psutil.virtual_memory().total / 2**20,
            versions=versions(),
            job_started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.clock.started)),
            wall_seconds=wall, time_seconds=parts,
            out_of_memory=ending.out_of_memory,
            slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        )

    def write(self, ending):
        """Write run_metrics.json (rank 0; whole or not at all) and print the lines the README
        shows."""
        metrics = self.metrics(ending)
        if self.training_args.process_index != 0:
            return
        path = Path(self.training_args.output_dir) / METRICS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{METRICS_FILE}.partial")
        try:
            partial.write_text(json.dumps(metrics, indent=2) + "\n")
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        print("\n".join(summary_lines(metrics, path)))


def versions():
    found = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda)
    for name in ("transformers", "deepspeed", "accelerate"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def epoch_table(log_history):
    """Per-epoch train loss, eval loss and steps from the Trainer's log history.

    Each epoch's evaluation is logged at the epoch's last step, and so is a train loss (the
    run logs one at every epoch's end, whatever --logging_steps). A logged train loss is the
    mean over the steps since the one logged before it, so the epoch's train loss is their
    mean weighted by those steps. A fractional last epoch keeps its fraction (0.5).
    """
    losses, previous = [], 0  # (step, steps it covers, loss)
    for e in sorted((e for e in log_history if "loss" in e), key=lambda e: e["step"]):
        losses.append((e["step"], e["step"] - previous, e["loss"]))
        previous = e["step"]
    epochs, previous_step = [], 0
    for e in (e for e in log_history if "eval_loss" in e):
        logged = [(steps, loss) for step, steps, loss in losses if previous_step < step <= e["step"]]
        covered = sum(steps for steps, _ in logged)
        epoch = round(e["epoch"], 2)
        epochs.append(dict(epoch=int(epoch) if epoch.is_integer() else epoch, step=e["step"],
                           steps=e["step"] - previous_step,
                           train_loss=sum(steps * loss for steps, loss in logged) / covered if covered else None,
                           eval_loss=e["eval_loss"],
                           eval_samples_per_second=e.get("eval_samples_per_second")))
        previous_step = e["step"]
    return epochs
