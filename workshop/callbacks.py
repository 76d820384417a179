"""The Trainer callbacks the run attaches (workshop/run.py): where the job's time goes,
checkpoints on time and on request, what the log says about the training, the answers before
training and a profile. Nothing happens on import."""
import contextlib
import math
import re
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from workshop.metrics import SAVE_AND_STOP_FILE, STOP_WITHOUT_SAVING_FILE, TIME_PARTS


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def gather(value):
    """value from every rank, as a list (rank order); [value] without a process group."""
    if not is_distributed():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


class Clock(TrainerCallback):
    """Where the job's seconds go, in TIME_PARTS, adding up to the job's wall time.

    Start-up runs from the job's start to the first optimizer step; the training loop is then
    split into steps, evaluation (ends at on_evaluate), checkpoint saving (ends at on_save)
    and steps that compiled (torch.compile compiling or recording CUDA graphs: seconds, once
    per shape). The steady speed leaves out those and the first step (allocations, kernels).
    """

    def __init__(self, started):
        self.started = started
        self.seconds = dict.fromkeys(TIME_PARTS, 0.0)
        self.first_step_at = self.mark = None
        self.steady_seconds, self.steady_steps = 0.0, 0
        self.compiling_steps, self.resumed_at, self.events_before = 0, 0, 0

    @contextlib.contextmanager
    def timing(self, part):
        start = time.time()
        try:
            yield
        finally:
            self.seconds[part] += time.time() - start

    @staticmethod
    def compiler_events():
        """Compiler stages run so far (torch.compile times each, CUDA graph recording too)."""
        if "torch._dynamo" not in sys.modules:  # nothing compiled: do not import the compiler
            return 0
        return sum(map(len, torch._dynamo.utils.compilation_time_metrics.values()))

    def _since_mark(self):
        now = time.time()
        seconds, self.mark = now - self.mark, now
        return seconds

    def on_step_begin(self, args, state, control, **kwargs):
        now = time.time()
        if self.first_step_at is None:
            self.first_step_at = now
            self.seconds["startup"] = now - self.started - sum(
                self.seconds[p] for p in ("compiling", "answer_generation"))
        elif self.mark is not None:  # between steps: data loading, logging
            self.seconds["training_steps"] += now - self.mark
        self.mark, self.events_before = now, self.compiler_events()

    def on_step_end(self, args, state, control, **kwargs):
        if args.device.type == "cuda":  # the step's kernels have run, not only been launched
            torch.cuda.synchronize()
        seconds = self._since_mark()
        if self.compiler_events() != self.events_before:
            self.seconds["compiling"] += seconds
            self.compiling_steps += 1
            return
        self.seconds["training_steps"] += seconds
        if state.global_step > 1 + self.resumed_at:  # the first step pays for start-up
            self.steady_seconds += seconds
            self.steady_steps += 1

    def on_train_begin(self, args, state, control, **kwargs):
        self.resumed_at = state.global_step

    def on_evaluate(self, args, state, control, **kwargs):
        if self.mark is not None:
            self.seconds["evaluation"] += self._since_mark()

    def on_save(self, args, state, control, **kwargs):
        if self.mark is not None:
            self.seconds["checkpoint_saving"] += self._since_mark()

    def on_train_end(self, args, state, control, **kwargs):
        if self.mark is not None:
            self.seconds["training_steps"] += self._since_mark()
            self.mark = None

    def parts(self):
        """TIME_PARTS in seconds, `other` the rest of the wall time; and the wall time."""
        wall = time.time() - self.started
        if self.first_step_at is None:  # stopped before training: all of it was start-up
            self.seconds["startup"] = wall - sum(v for k, v in self.seconds.items()
                                                 if k not in ("startup", "other"))
        named = sum(v for k, v in self.seconds.items() if k != "other")
        return {**self.seconds, "other": wall - named}, wall


class Checkpoints(TrainerCallback):
    """A checkpoint every `minutes` of the run and one when SAVE_AND_STOP_FILE appears (then
    training stops after the current step, to be resumed).

    A SIGTERM during training (`terminated`, from the run's signal handler) ends the run after
    the current step: saved and stopped as on request when the job asked for it (a preemption
    notice: the job creates the file within PREEMPTION_WAIT seconds), else interrupted (143), at
    once where the job says it is not one (STOP_WITHOUT_SAVING_FILE: scancel, the time limit).
    All ranks must save and stop at the same step, so rank 0 decides and tells the others in
    one small all-reduce per optimizer step (only with several ranks).
    """
    PREEMPTION_WAIT = 3  # s: how long the job may take to say that a SIGTERM is a preemption

    def __init__(self, output_dir, minutes, started):
        self.request = Path(output_dir) / SAVE_AND_STOP_FILE
        self.no_save = Path(output_dir) / STOP_WITHOUT_SAVING_FILE
        self.every, self.last_save = minutes * 60, started
        self.stopped_at = None  # the step after which training stopped on request
        self.saved_at_step = False
        self.training = self.terminated = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_step_end(self, args, state, control, **kwargs):
        zero = state.is_world_process_zero
        stop = zero and self.request.exists()
        save = zero and time.time() - self.last_save > self.every
        terminated = self.terminated
        if is_distributed():
            decision = torch.tensor([float(stop), float(save), float(terminated)], device=args.device)
            dist.all_reduce(decision, op=dist.ReduceOp.MAX)
            stop, save, terminated = decision.tolist()
        if terminated and not stop:  # a preemption notice, or scancel: the job says which
            deadline = time.time() + self.PREEMPTION_WAIT
            while zero and not (self.request.exists() or self.no_save.exists()) and time.time() < deadline:
                time.sleep(0.1)
            stop = zero and self.request.exists()
            if is_distributed():
                decision = torch.tensor([float(stop)], device=args.device)
                dist.all_reduce(decision, op=dist.ReduceOp.MAX)
                stop = decision.item()
            if not stop:
                sys.exit(128 + signal.SIGTERM)
        if save and state.global_step < state.max_steps:
            control.should_save = True
        if stop and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            self.saved_at_step = control.should_save  # a checkpoint was due at this step anyway
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last_save = time.time()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None:  # the Trainer ends the epoch here, whole or not
            if not float(state.epoch).is_integer():
                control.should_evaluate = False  # an eval loss only for whole epochs
            control.should_save = not self.saved_at_step  # one checkpoint, written once
        return control


class TrainingLog(TrainerCallback):
    """What the log says about the training: each epoch's own train loss, notices about counts
    that are not what they seem, and the end of a run whose loss diverged."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        per_epoch = max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)) \
            if train_dataloader is not None else state.max_steps
        if args.process_index == 0 and args.max_steps <= 0 and not float(args.num_train_epochs).is_integer():
            print(f"notice: --num_train_epochs {args.num_train_epochs:g} trains {state.max_steps} "
                  f"optimizer step{'s' if state.max_steps > 1 else ''}: {args.num_train_epochs:g} x "
                  f"{per_epoch} steps an epoch, rounded up to whole steps (the run ends at epoch "
                  f"{state.max_steps / per_epoch:.3g})")
        if args.process_index == 0 and state.logging_steps > per_epoch:
            print(f"notice: --logging_steps {args.logging_steps:g} is above an epoch's {per_epoch} "
                  f"optimizer steps: the train loss is also logged at every epoch's end")

    def on_log(self, args, state, control, logs=None, **kwargs):
        """A loss or gradient norm that is not a number: every step after it is wasted. (fp16's
        loss scaling skips steps whose gradients overflow: their norm is no sign.)"""
        watched = ("loss", "eval_loss") + (() if args.fp16 else ("grad_norm",))
        for name, value in ((k, (logs or {}).get(k)) for k in watched):
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise ValueError(f"the {name.replace('_', ' ')} became {value} at step "
                                 f"{state.global_step}: the run diverged; lower --learning_rate "
                                 f"({args.learning_rate:g} now)"
                                 f"{', or train in bf16 rather than fp16' if args.fp16 else ''}")

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_log = True  # each epoch's own train loss, whatever --logging_steps
        return control


class AnswerQualityBeforeTraining(TrainerCallback):
    """SQuAD EM/F1 of the model as it starts (not when resuming), kept in the Trainer's log
    history so that a resumed run still has it. It runs once DeepSpeed has set the model up:
    under ZeRO-3 only then can the partitioned layers be gathered to generate."""

    def __init__(self, tokenizer, rows, max_length, clock):
        self.tokenizer, self.rows, self.max_length, self.clock = tokenizer, rows, max_length, clock

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            from workshop.answers import answer_quality
            with self.clock.timing("answer_generation"):
                scores, _ = answer_quality(model, self.tokenizer, self.rows, self.max_length, args.device)
            state.log_history.append(dict(answer_quality_before=scores, step=0))


# What a kernel is, by its name (CUDA kernels of torch, cuBLAS, inductor and fused AdamW)
KERNEL_KINDS = (("matmuls", r"gemm|gemv|cutlass|cublas|sm90_xmma|nvjet"),
                ("attention", r"flash|fmha|attention|sdpa|efficient"),
                ("optimizer", r"adam|multi_tensor|foreach"),
                ("loss", r"cross_entropy|log_softmax|nll_loss"),
                ("compiled (fused elementwise)", r"triton"),
                ("copies and casts", r"copy|cast|fill|cat_|memcpy|memset"))


class StepProfiler(TrainerCallback):
    """torch.profiler over `steps` optimizer steps from the middle of the run: the GPU's time by
    kind of kernel, and the time it waited (the steps' wall time less its busy time), in
    output_dir/profile.txt and printed. With compiled blocks, profile a run of two epochs or
    more: by its middle every sequence length has compiled."""

    def __init__(self, output_dir, steps):
        self.path, self.steps = Path(output_dir) / "profile.txt", steps
        self.profiler = self.started = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.profiler is None and self.started is None and state.global_step >= state.max_steps // 2:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                               torch.profiler.ProfilerActivity.CUDA])
            self.profiler.__enter__()
            self.first, self.started = state.global_step, time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None and state.global_step - self.first >= self.steps:
            torch.cuda.synchronize()
            wall = time.time() - self.started
            self.profiler.__exit__(None, None, None)
            self.write(wall, state.global_step - self.first)
            self.profiler = None

    def write(self, wall, steps):
        kinds = dict.fromkeys([k for k, _ in KERNEL_KINDS] + ["other kernels"], 0.0)
        for event in self.profiler.key_averages():
            seconds = getattr(event, "self_device_time_total", 0) / 1e6
            if seconds and event.device_type == torch.autograd.DeviceType.CUDA:
                kind = next((k for k, pattern in KERNEL_KINDS if re.search(pattern, event.key, re.I)),
                            "other kernels")
                kinds[kind] += seconds
        busy = sum(kinds.values())
        lines = [f"{steps} optimizer steps, {wall:.3f} s of wall time ({wall / steps * 1e3:.1f} ms a step)",
                 "| part | ms a step | share of the wall time |", "|---|---|---|"]
        for kind, seconds in sorted(kinds.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {kind} | {seconds / steps * 1e3:.1f} | {seconds / wall:.0%} |")
        lines.append(f"| GPU waiting (launch gaps, Python, the CPU) | {(wall - busy) / steps * 1e3:.1f} | "
                     f"{(wall - busy) / wall:.0%} |")
        self.path.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
