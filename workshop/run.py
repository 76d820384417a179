"""The run around train.py's lesson: one context that maps how the run ends to its exit status
and writes run_metrics.json however it ends, with the Trainer callbacks it attaches
(workshop/callbacks.py) and the resume checks (workshop/resume.py). Nothing happens on import;
entering the context installs the signal handlers and the compile caches, leaving it restores
the handlers.

Exit statuses (the .slurm jobs act on them): 0 finished, 75 stopped on request with a
checkpoint (the job requeues itself), 1 refused or failed (the reason is the last line,
`error: ...`), 128 + signal when killed (143: scancel, the time limit).
"""
import contextlib
import errno
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
from transformers import AutoConfig, TrainerCallback

from workshop.callbacks import (AnswerQualityBeforeTraining, Checkpoints, Clock, StepProfiler, gather,
                                is_distributed)
from workshop.checks import deepspeed_refusal
from workshop.metrics import (METRICS_FILE, SCHEMA_VERSION, SETTINGS_FILE, STOPPED_TO_RESUME, checkpoint_step,
                              checkpoints, is_complete, mib, newest_checkpoint, summary_lines)
from workshop.models import describe
from workshop.resume import resume_point, run_settings, take_lock
from workshop.squad import memorised, shared_rows


def job_started_at():
    """When the job started: JOB_STARTED_AT (epoch seconds, set by the .slurm job first thing),
    else this process's start."""
    if "JOB_STARTED_AT" in os.environ:
        return float(os.environ["JOB_STARTED_AT"])
    return psutil.Process().create_time()


def use_compile_caches():
    """Keep what torch.compile and DeepSpeed's op builder compile between jobs, one folder per
    Python environment: environments sharing one folder rebuild each other's ops every job.

    COMPILE_CACHE (the .slurm jobs set it; CLUSTER: shared storage) holds them; an explicit
    TORCHINDUCTOR_CACHE_DIR or TORCH_EXTENSIONS_DIR wins. A folder that cannot be written is a
    warning, and this job compiles into a temporary folder instead."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    base = Path(os.environ.get("COMPILE_CACHE", Path.home() / ".cache" / "bloom-workshop"))
    for variable, name in (("TORCHINDUCTOR_CACHE_DIR", "inductor"),
                           ("TORCH_EXTENSIONS_DIR", "torch_extensions")):
        explicit = os.environ.get(variable)
        if explicit == os.path.abspath(default_cache_dir()):  # torch's own, set as it imports
            explicit = None
        folder = Path(explicit or base / environment_key() / name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            print(f"warning: compile cache {folder} is not writable ({e.strerror}): this job "
                  f"compiles without it (set COMPILE_CACHE to a writable folder)", file=sys.stderr)
            folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        os.environ[variable] = str(folder)


def environment_key():
    """The compile caches' folder name for this Python environment."""
    return f"{Path(sys.prefix).name}-{hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]}"


def check_memory(args, training_args, deepspeed, settings, longest):
    """Refuse, before training, a run whose peak the memory plan (workshop/memory_plan.py)
    puts above what this device can give: the GPU's memory, or the host's on the CPU."""
    from workshop.memory_plan import fits, predict
    cuda = training_args.device.type == "cuda"
    try:
        plan = predict(args.model_name_or_path, world_size=settings["world_size"],
                       nodes=int(os.environ.get("SLURM_NNODES", 1)),
                       per_device_train_batch_size=training_args.per_device_train_batch_size,
                       gradient_accumulation_steps=training_args.gradient_accumulation_steps,
                       max_length=args.max_length, zero_stage=deepspeed.stage,
                       precision=settings["precision"],
                       offload_optimizer=bool(deepspeed.offload("optimizer")),
                       offload_param=bool(deepspeed.offload("param")),
                       gradient_checkpointing=bool(training_args.gradient_checkpointing),
                       fast_path=args.fast_path, compile_blocks=bool(args.compile_blocks),
                       pad_to_max_length=args.pad_to_max_length, longest=longest,
                       length_multiple=args.length_multiple, save_model=args.save_model)
    except (ValueError, OSError):  # a model the plan cannot read: not checked
        return
    if cuda:
        need, capacity = plan["gpu_mib"], torch.cuda.get_device_properties(training_args.device).total_memory / 2**20
    else:  # the CPU's tensors and the process itself share the host's memory
        need, capacity = plan["gpu_mib"] + plan["host_mib"], psutil.virtual_memory().total / 2**20
    if fits(need, capacity, gpu=cuda) == "no":
        where = "this GPU's" if cuda else "this machine's"
        raise ValueError(
            f"the plan puts this run's peak at {need:,.0f} MiB per {'GPU' if cuda else 'process'} "
            f"(--max_length {args.max_length}, batch {training_args.per_device_train_batch_size}; "
            f"{plan['phase']}), above {where} {capacity:,.0f} MiB: lower --max_length or "
            f"--per_device_train_batch_size, or see what fits with `python tools/plan.py "
            f"{args.model_name_or_path}`")


def check_free_space(args, training_args, deepspeed, settings):
    """Refuse, before training, a run whose output folder's disk cannot hold what it writes
    there: its model at the end and the checkpoints it may keep at once, sized from the
    parameter count (workshop/models.py) and the precision the files are written in."""
    from workshop.models import architecture
    try:
        params = architecture(args.model_name_or_path).params
    except (ValueError, OSError):  # a model the plan cannot read: not checked
        return
    # bytes per parameter of the saved weights: fp32, but 16-bit where DeepSpeed's engine holds
    # the model in fp16/bf16; a checkpoint adds AdamW's two fp32 moments and, under DeepSpeed,
    # its fp32 master copy and (below ZeRO-3, which partitions them) its engine's copy of the weights
    weights = 2 if deepspeed.stage is not None and settings["precision"] != "fp32" else 4
    checkpoint = params * (weights + 8 if deepspeed.stage is None else
                           weights + 12 + (weights if deepspeed.stage < 3 else 0))
    model = params * weights if args.save_model else 0
    strategy = str(getattr(training_args.save_strategy, "value", training_args.save_strategy))
    steps = training_args.max_steps if training_args.max_steps > 0 else math.ceil(
        training_args.num_train_epochs * math.ceil(args.train_samples / (
            training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            * training_args.world_size)))
    every = training_args.save_steps if training_args.save_steps >= 1 else training_args.save_steps * steps
    saves = {"steps": steps // max(1, int(every)), "epoch": math.ceil(training_args.num_train_epochs)}.get(strategy, 1)
    output_dir = Path(training_args.output_dir)
    kept = len(checkpoints(output_dir)) if output_dir.is_dir() else 0
    limit = training_args.save_total_limit
    # at least one (the time limit's warning saves one); a new one is written before the oldest goes
    count = max(1, min(saves, limit + 1 - kept if limit else saves))
    need = model + count * checkpoint
    place = next(p for p in (output_dir.absolute(), *output_dir.absolute().parents) if p.exists())
    free = shutil.disk_usage(place).free
    if free < need:
        raise ValueError(
            f"--output_dir {training_args.output_dir}: its disk has {mib(free)} free, and this run "
            f"writes about {mib(need)} there ({f'the model, {mib(model)}, and ' if model else ''}"
            f"{count} checkpoint{'s' if count > 1 else ''} of {mib(checkpoint)}: weights and "
            f"optimizer state): free space there, or give an --output_dir on a disk with room"
            f"{' (--save_total_limit keeps fewer checkpoints)' if count > 1 else ''}")


def one_line(error):
    """The reason for a failure, in one line, with what to do where that is known."""
    text = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, torch.OutOfMemoryError):
        numbers = re.findall(r"(?:allocate|capacity of|memory) ([\d.]+ [GM]iB)", text)
        said = (f" (asked {numbers[0]} more with {numbers[2]} allocated, of {numbers[1]})"
                if len(numbers) >= 3 else "")
        return (f"out of GPU memory{said}: `python tools/plan.py MODEL --gpu A100-40GB` "
                f"says what fits; try --gradient_checkpointing True, a smaller "
                f"--per_device_train_batch_size with more --gradient_accumulation_steps, or ZeRO "
                f"with offload")
    if "timed out" in text.lower() or "timeout" in type(error).__name__.lower():
        return (f"a collective operation timed out ({text[:160]}): another rank or node stopped "
                f"answering; its own log says why (COLLECTIVE_TIMEOUT, --ddp_timeout, sets the wait)")
    return f"{type(error).__name__}: {text}" if not isinstance(error, (ValueError, OSError)) else text


# What DeepSpeed raises, as it sets up the model and the engine, on a config it cannot run
CONFIG_ERRORS = (AssertionError, TypeError, ValueError, KeyError, AttributeError, NotImplementedError)


def causes(error):
    """An exception and those it came from (raise ... from, or raised while handling)."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def disk_full(error):
    """Whether a failure comes down to a full disk or quota (safetensors and torch.save say so
    in their own exceptions' text)."""
    return any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
               or re.search(r"No space left on device|Disk quota exceeded|StorageFull", str(e))
               for e in causes(error))


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


class Run(TrainerCallback):
    """The context around train.py: what the run is (begin), where its time went (Clock),
    checkpoints (Checkpoints), and, however it ends, run_metrics.json and the exit status."""

    def __init__(self):
        self.started = job_started_at()
        self.clock = Clock(self.started)
        self.status, self.error, self.out_of_memory = "failed", None, None
        self.args = self.training_args = self.deepspeed = self.settings = None
        self.checkpoints = self.model = self.state = self.data = self.answers_after = None
        self.lock = self.handlers = self.environment = self.checkpoints_before = None
        self.made_output_dir = self.saving_model = self.refused = False
        self.validation_in_train = None

    # -- the context -------------------------------------------------------------------------
    def __enter__(self):
        # scancel and the time limit send SIGTERM: leave through SystemExit, so that the
        # metrics file is still written (status interrupted) on the way out.
        self.handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.environment = dict(os.environ)
        use_compile_caches()  # what torch.compile and DeepSpeed compile is kept for the next job
        return self

    def __exit__(self, kind, error, tb):
        for sig, handler in (self.handlers or {}).items():
            signal.signal(sig, handler)
        os.environ.clear()  # as it was (a process that runs train.py's main() more than once)
        os.environ.update(self.environment)
        if isinstance(error, SystemExit) and not (isinstance(error.code, int) and error.code >= 128):
            self._release()
            return False  # argparse's own exits (--help, a misspelled option) pass
        if error is None:
            self.status = "stopped_on_request" if self.stopped_to_resume else "complete"
            code = STOPPED_TO_RESUME if self.stopped_to_resume else 0
        elif isinstance(error, SystemExit):  # SIGTERM (scancel, time limit) or SIGINT
            self.status, self.error, code = "interrupted", f"stopped by signal {error.code - 128}", error.code
        else:
            self.error, code = self._reason(kind, error, tb), 1
        close_progress_bars()
        if self.model is not None and not self.refused:
            try:
                self.write()
            except Exception as e:  # after a failure, its reason is what matters
                if error is None:  # a full disk, say: the run is not complete without its metrics
                    self.error, code = self._reason(type(e), e, e.__traceback__), 1
        self._release()
        if self.error and self.status != "interrupted":
            print(f"error: {self.error}", file=sys.stderr, flush=True)
        _leave(code)

    def _reason(self, kind, error, tb):
        """Why the run failed, in one line: a refusal's own words; a full disk, naming the folder
        and what was kept; an assertion of DeepSpeed's before the first step as its config's
        refusal; any other fault after its traceback."""
        if disk_full(error) and (self.saving_model or self.clock.first_step_at is not None):
            return self._disk_full(error)  # (before training: a refusal or load_op's own line)
        deepspeed_frames = [f for f in traceback.extract_tb(tb) if f"{os.sep}deepspeed{os.sep}" in f.filename]
        if isinstance(error, CONFIG_ERRORS) and deepspeed_frames and self.clock.first_step_at is None:
            where = deepspeed_frames[-1]  # DeepSpeed checks its config by assertions as it starts
            said = " ".join(str(error).split()) or f"assert {where.line}"
            if not isinstance(error, AssertionError):
                said = f"{type(error).__name__}: {said}"
            self.refused = True  # as its config class's refusals are: nothing written
            return deepspeed_refusal(self.training_args.deepspeed,
                                     f"{said[:300]}; {where.filename.split(f'{os.sep}site-packages{os.sep}')[-1]}"
                                     f":{where.lineno}")
        if not isinstance(error, (ValueError, OSError)):  # a fault: its traceback, then why
            traceback.print_exception(kind, error, tb)
        self.out_of_memory = "gpu" if isinstance(error, torch.OutOfMemoryError) else None
        return one_line(error)

    def _disk_full(self, error):
        """A full disk: the half-written checkpoint this run was saving goes (the final save's
        files go with Run.timing), the complete ones stay; said with the folder and its space."""
        output_dir = Path(self.training_args.output_dir)
        filename = next((getattr(e, "filename", None) for e in causes(error) if getattr(e, "filename", None)), None)
        folder = output_dir if filename is None or output_dir.resolve() in Path(filename).resolve().parents \
            else Path(filename).parent
        if self.training_args.process_index == 0 and self.checkpoints_before is not None:
            for cut in set(checkpoints(output_dir)) - self.checkpoints_before:
                if not is_complete(cut):
                    shutil.rmtree(cut, ignore_errors=True)
        place = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
        said = (f"no space left on the disk of {folder}{' while saving the model' if self.saving_model else ''} "
                f"({mib(shutil.disk_usage(place).free)} free now)")
        if folder != output_dir:
            return f"{said}: free space there, or point TMPDIR, COMPILE_CACHE or HF_HOME elsewhere"
        newest = newest_checkpoint(output_dir)
        kept = (f"its newest complete checkpoint, {newest.name}, is kept: run again into it to "
                f"resume" if newest else "no checkpoint was saved: a run again into it starts afresh")
        return f"{said}; {kept}; free space there, or give an --output_dir on a disk with room"

    def _on_signal(self, signum, frame):
        """The first SIGTERM/SIGINT ends the run through SystemExit (a SIGTERM during training:
        after the current step, saved if the job says it is a preemption: Checkpoints); later
        ones are ignored: SLURM signals every process of the job and the deepspeed launcher
        passes it on to its ranks, and a second signal would cut the metrics file short."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if signum == signal.SIGTERM and self.checkpoints is not None and self.checkpoints.training:
            self.checkpoints.terminated = True
            return
        sys.exit(128 + signum)

    def _release(self):
        if self.lock:
            self.lock.unlink(missing_ok=True)
            self.lock = None
        if self.made_output_dir:  # a run refused before it wrote anything leaves no folder
            with contextlib.suppress(OSError):
                Path(self.training_args.output_dir).rmdir()

    # -- what train.py tells it --------------------------------------------------------------
    def begin(self, args, training_args, deepspeed):
        """Note what the run is; refuse a finished run, a folder another run holds, and a
        checkpoint that cannot be resumed; returns the checkpoint to resume from, or None."""
        self.args, self.training_args, self.deepspeed = args, training_args, deepspeed
        self.settings = run_settings(args, training_args, deepspeed)
        resume_from = resume_point(training_args.output_dir, training_args.resume_from_checkpoint,
                                   AutoConfig.from_pretrained(args.model_name_or_path), self.settings)
        check_free_space(args, training_args, deepspeed, self.settings)
        if training_args.process_index == 0:
            self.made_output_dir = not Path(training_args.output_dir).exists()
            self.lock = take_lock(training_args.output_dir)
        if resume_from:
            print(f"resuming from {resume_from} (step {checkpoint_step(resume_from)})")
        return resume_from

    def callbacks(self, tokenizer, data):
        """The Trainer's callbacks: the clock, checkpoints, this record, and the answers'
        quality before training. First, a run the memory plan says cannot fit is refused."""
        self.data = data
        check_memory(self.args, self.training_args, self.deepspeed, self.settings, data.longest)
        self.validation_in_train = shared_rows(data.train["input_ids"], data.validation["input_ids"])
        if self.validation_in_train and self.training_args.process_index == 0:
            print(f"warning: {memorised(self.validation_in_train, len(data.validation))}", file=sys.stderr)
        self.checkpoints = Checkpoints(self.training_args.output_dir, self.args.save_minutes, self.started)
        callbacks = [self.clock, self.checkpoints, self]
        if self.args.profile_steps and self.training_args.device.type == "cuda":
            callbacks.append(StepProfiler(self.training_args.output_dir, self.args.profile_steps))
        if self.args.answer_quality:
            callbacks.append(AnswerQualityBeforeTraining(tokenizer, data.questions,
                                                         self.args.max_length, self.clock))
        return callbacks

    @contextlib.contextmanager
    def timing(self, part):
        """Time a part of the job (Clock). The final save either writes the whole model or
        nothing: what a failed one wrote (a full disk) is removed, the checkpoints stay."""
        folder = Path(self.training_args.output_dir)
        self.saving_model = part == "final_save"
        before = set(folder.iterdir()) if self.saving_model and folder.is_dir() else None
        try:
            with self.clock.timing(part):
                yield
        except BaseException:
            if before is not None and self.training_args.process_index == 0:
                for path in set(folder.iterdir()) - before:
                    if path.is_file():
                        path.unlink(missing_ok=True)
            raise
        self.saving_model = False

    @property
    def stopped_to_resume(self):
        return self.checkpoints is not None and self.checkpoints.stopped_at is not None

    def record_answers(self, rows, answers, scores):
        """The answers after training: in run_metrics.json, and answers.jsonl (rank 0)."""
        from workshop.answers import write_answers
        self.answers_after = scores
        if self.training_args.process_index == 0:
            write_answers(self.training_args.output_dir, rows, answers)

    # -- the Trainer's events ----------------------------------------------------------------
    def on_init_end(self, args, state, control, model=None, **kwargs):
        self.model, self.state = model, state

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.state = state
        self.checkpoints_before = set(checkpoints(args.output_dir))  # a full disk cuts only later ones
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
        if args.process_index == 0:  # what a resumed run is checked against
            (Path(args.output_dir) / SETTINGS_FILE).write_text(json.dumps(self.settings, indent=2) + "\n")

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

    # -- run_metrics.json --------------------------------------------------------------------
    def metrics(self):
        """The metrics dict (docs/metrics.md). Per-rank values are gathered from every rank only
        after a successful run: after a failure the other ranks may be gone."""
        args, targs, state, ds = self.args, self.training_args, self.state, self.deepspeed
        per_rank = gather if self.status in ("complete", "stopped_on_request") else (lambda v: [v])
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
            status=self.status, error=self.error,
            stopped_on_request_at_step=self.checkpoints.stopped_at if self.checkpoints else None,
            stage=Path(sys.argv[0]).resolve().parent.name,
            model=args.model_name_or_path, random_weights=args.random_weights,
            parameters=sum(getattr(p, "ds_numel", p.numel()) for p in self.model.parameters()),
            architecture=describe(config),
            dataset=args.dataset_name_or_path,
            train_samples=args.train_samples, eval_samples=args.eval_samples,
            max_length=args.max_length, pad_to_max_length=args.pad_to_max_length,
            shortened_contexts=self.data.shortened if self.data else None,
            validation_rows_in_train=self.validation_in_train,
            longest_sequence_tokens=self.data.longest if self.data else None,
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
            job_started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            wall_seconds=wall, time_seconds=parts,
            out_of_memory=self.out_of_memory,
            slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        )

    def write(self):
        """Write run_metrics.json (rank 0; whole or not at all) and print the lines the README
        shows."""
        metrics = self.metrics()
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


def close_progress_bars():
    """The Trainer's progress bars that a failure or a signal left open, closed now: else they
    redraw as the process exits, after its summary and its reason."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def _leave(code):
    """Exit with `code`. With several ranks, a rank that finished waits for the others, then
    leaves at once: the interpreter's teardown could still abort after everything succeeded
    (ZeRO-3 at 2 ranks: "terminate called without an active exception", signal 6). A failed
    rank leaves at once (the launcher then ends the others)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if is_distributed() and code in (0, STOPPED_TO_RESUME):
        dist.barrier()
        dist.destroy_process_group()
        os._exit(code)
    sys.exit(code)
