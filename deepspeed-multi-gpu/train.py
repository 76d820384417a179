"""Fine-tune BLOOM on SQuAD with the HF Trainer; with DeepSpeed when a config is named.

    python train.py                                  # the workshop's settings (config.py)
    deepspeed --num_gpus 1 train.py --deepspeed ds_zero2.json

Writes checkpoints, the final model and `run_metrics.json` (what the workshop's tables
need) to --output_dir, and resumes from the newest complete checkpoint found there.
"""
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import (AutoConfig, DataCollatorForSeq2Seq, Trainer, TrainerCallback,
                          default_data_collator, set_seed)

from answer_quality import ANSWERS_FILE, answer_quality, write_answers
from config import parse_args
from data_loader import build_datasets
from fast_path import enable_fast_path
from model import load_model, save_model

METRICS_FILE = "run_metrics.json"
# The .slurm jobs create this file in --output_dir when SLURM warns that the time limit is near.
SAVE_AND_STOP_FILE = "save-and-stop"
# Architecture keys that must match for a checkpoint to belong to this model.
ARCHITECTURE_KEYS = ("model_type", "vocab_size", "hidden_size", "n_layer", "n_head")


class StepTimer(TrainerCallback):
    """Time spent in optimizer steps only (no evaluation, no checkpoint saving, no first step,
    no step that compiled something).

    The Trainer's train_samples_per_second divides by the whole run, evaluation, saving and
    start-up included; this is the speed of training itself, for comparing configurations.
    With compiled blocks a new input shape is compiled in one step and its CUDA graphs are
    recorded in the next step of that shape (seconds, once per run): those steps are counted
    apart, in compiling_steps and compiling_seconds.
    """

    def __init__(self):
        self.seconds, self.steps = 0.0, 0
        self.compiling_seconds, self.compiling_steps = 0.0, 0

    @staticmethod
    def compiler_events():
        """How many compiler stages have run (torch.compile records each one it times, CUDA
        graph recording included)."""
        return sum(map(len, torch._dynamo.utils.compilation_time_metrics.values()))

    def on_step_begin(self, args, state, control, **kwargs):
        self.started, self.compiler_events_before = time.perf_counter(), self.compiler_events()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.started
        if self.compiler_events() != self.compiler_events_before:
            self.compiling_seconds += seconds
            self.compiling_steps += 1
        elif state.global_step > 1:  # the first step pays for start-up (allocations, kernels)
            self.seconds += seconds
            self.steps += 1


class SaveAndStopOnRequest(TrainerCallback):
    """Save a checkpoint and stop after the current step once SAVE_AND_STOP_FILE appears.

    The .slurm jobs create the file on SLURM's warning signal before the time limit, then
    requeue themselves; the next run resumes from this checkpoint. All ranks must stop after
    the same step, so rank 0 looks for the file and tells the others (one tiny all-reduce
    per optimizer step).
    """

    def __init__(self, output_dir):
        self.request = Path(output_dir) / SAVE_AND_STOP_FILE
        self.stopped_at = None  # the step after which training stopped on request
        self.saved_at_step = False

    def on_step_end(self, args, state, control, **kwargs):
        asked = torch.tensor(float(state.is_world_process_zero and self.request.exists()),
                             device=args.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(asked)
        if asked.item() and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            self.saved_at_step = control.should_save  # a checkpoint was due at this step anyway
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None:  # the Trainer ends the epoch here, whole or not
            if not float(state.epoch).is_integer():
                control.should_evaluate = False  # an eval loss only for whole epochs
            control.should_save = not self.saved_at_step  # one checkpoint, written once
        return control


class AnswerQualityBeforeTraining(TrainerCallback):
    """SQuAD EM/F1 of the model as it starts (not when resuming), kept in the Trainer's log
    history so that a resumed run still has it. It runs once DeepSpeed has set the model up:
    under ZeRO-3 only then can the partitioned layers be gathered to generate."""

    def __init__(self, tokenizer, rows, max_length):
        self.tokenizer, self.rows, self.max_length = tokenizer, rows, max_length

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            scores, _ = answer_quality(model, self.tokenizer, self.rows, self.max_length, args.device)
            state.log_history.append(dict(answer_quality_before=scores, step=0))


def newest_complete_checkpoint(output_dir, model_config):
    """The newest checkpoint-N in output_dir that was completely written, or None.

    The Trainer writes trainer_state.json last, so a checkpoint without it was cut off
    (time limit, preemption): it is skipped, never deleted.
    """
    folders = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for folder in reversed(folders):
        if not (folder / "trainer_state.json").is_file():
            print(f"skipping incomplete checkpoint {folder}")
            continue
        theirs = AutoConfig.from_pretrained(folder).to_dict()
        ours = model_config.to_dict()
        if any(theirs.get(k) != ours.get(k) for k in ARCHITECTURE_KEYS):
            raise ValueError(f"{folder} holds a checkpoint of another model "
                             f"({', '.join(f'{k}={theirs.get(k)}' for k in ARCHITECTURE_KEYS)}); "
                             f"choose another --output_dir")
        return str(folder)
    return None


def epoch_table(log_history):
    """Per-epoch train loss, eval loss and steps from the Trainer's log history.

    Each epoch's evaluation is logged at the epoch's last step; the train loss of an epoch is
    the mean of the losses logged at every step since the previous evaluation.
    """
    step_losses = {e["step"]: e["loss"] for e in log_history if "loss" in e}
    evaluations = [e for e in log_history if "eval_loss" in e]
    epochs, previous_step = [], 0
    for e in evaluations:
        losses = [loss for step, loss in step_losses.items() if previous_step < step <= e["step"]]
        epochs.append(dict(epoch=round(e["epoch"]), step=e["step"], steps=e["step"] - previous_step,
                           train_loss=sum(losses) / len(losses) if losses else None,
                           eval_loss=e["eval_loss"],
                           eval_samples_per_second=e.get("eval_samples_per_second")))
        previous_step = e["step"]
    return epochs


def gather(value):
    """value from every rank, as a list (rank order); [value] without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def zero_settings(training_args):
    """(ZeRO stage, optimizer offload device, parameter offload device), or Nones."""
    if not training_args.deepspeed:
        return None, None, None
    zero = training_args.hf_deepspeed_config.config.get("zero_optimization", {})
    return (zero.get("stage", 0), zero.get("offload_optimizer", {}).get("device"),
            zero.get("offload_param", {}).get("device"))


def run_metrics(args, training_args, trainer, timer, stop, train_output, started, answers_after):
    """Everything the workshop's tables need, in one JSON-able dict.

    Per-rank values are gathered from every rank only after a successful run: after a
    failure the other ranks may be gone, and a collective would hang.
    """
    per_rank = gather if train_output else (lambda value: [value])
    stage, offload_optimizer, offload_param = zero_settings(training_args)
    samples_per_step = (training_args.per_device_train_batch_size
                        * training_args.gradient_accumulation_steps * training_args.world_size)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    epochs = epoch_table(trainer.state.log_history)
    train = train_output.metrics if train_output else {}
    before = next((e["answer_quality_before"] for e in trainer.state.log_history
                   if "answer_quality_before" in e), None)
    return dict(
        complete=train_output is not None and stop.stopped_at is None,
        stopped_on_request_at_step=stop.stopped_at,
        stage=Path(__file__).resolve().parent.name,
        model=args.model_name_or_path, random_weights=args.random_weights,
        dataset=args.dataset_name_or_path,
        train_samples=args.train_samples, eval_samples=args.eval_samples,
        max_length=args.max_length, pad_to_max_length=args.pad_to_max_length,
        fast_path=args.fast_path,
        compile_blocks=args.compile_blocks,
        precision="bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        world_size=training_args.world_size,
        nodes=int(os.environ.get("SLURM_NNODES", 1)),
        deepspeed_config=training_args.deepspeed, zero_stage=stage,
        offload_optimizer=offload_optimizer, offload_param=offload_param,
        epochs=epochs,
        steps_per_epoch=epochs[0]["steps"] if epochs else None,
        global_step=trainer.state.global_step,
        train_loss=train.get("train_loss"),
        train_runtime=train.get("train_runtime"),
        train_samples_per_second=train.get("train_samples_per_second"),
        steady_train_samples_per_second=(timer.steps * samples_per_step / timer.seconds
                                         if timer.seconds else None),
        compiling_steps=timer.compiling_steps,  # not in the steady speed: compiling or recording
        compiling_seconds=timer.compiling_seconds,
        eval_samples_per_second=(sum(e["eval_samples_per_second"] for e in epochs) / len(epochs)
                                 if epochs else None),
        answer_quality=dict(before=before, after=answers_after) if args.answer_quality else None,
        peak_gpu_memory_allocated_mib=per_rank(peak_gpu),  # per rank
        peak_host_rss_mib=per_rank(peak_rss),  # per rank
        wall_seconds=time.time() - started,
        slurm_job_id=os.environ.get("SLURM_JOB_ID"),
    )


def build_trainer(args, training_args):
    """The Trainer, its step timer and stop-on-request callback, the checkpoint to resume from
    and the validation questions to answer (None for either when there is none)."""
    set_seed(training_args.seed)  # the same random weights (random_weights) and order every run
    model, tokenizer = load_model(args.model_name_or_path, args.random_weights)
    if args.fast_path:
        enable_fast_path(model, compiled=args.compile_blocks)
    train_dataset, eval_dataset, validation_rows = build_datasets(args, tokenizer)
    resume_from = (newest_complete_checkpoint(training_args.output_dir, model.config)
                   if Path(training_args.output_dir).is_dir() else None)
    # Lengths rounded up to a multiple of 8 suit the GPU's matrix units; compiled blocks record a
    # CUDA graph per length, so there they are rounded to 64: at most 8 lengths up to 512.
    collator = (default_data_collator if args.pad_to_max_length
                else DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100,
                                            pad_to_multiple_of=64 if args.compile_blocks else 8))
    timer, stop = StepTimer(), SaveAndStopOnRequest(training_args.output_dir)
    callbacks = [timer, stop]
    questions = validation_rows if args.answer_quality else None
    if args.answer_quality:
        callbacks.append(AnswerQualityBeforeTraining(tokenizer, questions, args.max_length))
    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset,
                      eval_dataset=eval_dataset, processing_class=tokenizer,
                      data_collator=collator, callbacks=callbacks)
    return trainer, timer, stop, resume_from, questions


def train(args, training_args, trainer, timer, stop, resume_from, questions):
    """Train, save the model, and write the metrics file (also when training fails or stops
    on request)."""
    started = time.time()
    if resume_from:
        print(f"resuming from {resume_from} (step {int(resume_from.rsplit('-', 1)[1])})")
    train_output = after = None
    try:
        train_output = trainer.train(resume_from_checkpoint=resume_from)
        if stop.stopped_at is None:
            save_model(trainer, training_args.output_dir)
            trainer.save_state()  # trainer_state.json: the log history of every step, for plots
            if questions:  # every rank: under ZeRO-3 they generate together
                after, answers = answer_quality(trainer.model, trainer.processing_class, questions,
                                                args.max_length, training_args.device)
                if trainer.is_world_process_zero():
                    write_answers(Path(training_args.output_dir) / ANSWERS_FILE, questions, answers)
    finally:  # a failed run still leaves its metrics, marked incomplete
        metrics = run_metrics(args, training_args, trainer, timer, stop, train_output, started, after)
        if trainer.is_world_process_zero():
            path = Path(training_args.output_dir) / METRICS_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(metrics, indent=2) + "\n")
            print(f"metrics: {path}")
    if trainer.is_world_process_zero():
        for e in metrics["epochs"]:
            print(f"epoch {e['epoch']}: train_loss {e['train_loss']:.4f} "
                  f"eval_loss {e['eval_loss']:.4f}")
        quality = metrics["answer_quality"]
        if quality and quality["before"] and quality["after"]:
            print("answers to {samples} validation questions: exact match {0[exact_match]:.1f} -> "
                  "{1[exact_match]:.1f}, F1 {0[f1]:.1f} -> {1[f1]:.1f} (before -> after training)"
                  .format(quality["before"], quality["after"], samples=quality["after"]["samples"]))
        if stop.stopped_at is not None:
            print(f"stopped on request ({stop.request}) after step {stop.stopped_at} of "
                  f"{trainer.state.max_steps}: checkpoint-{stop.stopped_at} saved; run again "
                  f"with --output_dir {training_args.output_dir} to resume")


def main(argv=None):
    # scancel and the time limit send SIGTERM: leave through SystemExit, so that train()
    # still writes the metrics file (marked incomplete) on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        args, training_args = parse_args(argv)
        trainer, timer, stop, resume_from, questions = build_trainer(args, training_args)
    except (ValueError, OSError) as e:  # bad input: one line, before any GPU time is spent
        sys.exit(f"error: {e}")
    train(args, training_args, trainer, timer, stop, resume_from, questions)
    # With ZeRO-3 at 2 ranks the interpreter's teardown can still abort after everything
    # succeeded ("terminate called without an active exception", signal 6: seen after
    # generating under ZeRO-3 even with the process group ended). Everything is written by
    # now, so a rank leaves at once once all ranks are here.
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
