"""The workshop's objective tables, from what the runs left behind; Markdown on stdout.

    python tools/tables.py baseline deepspeed-single-gpu           # stage folders
    python tools/tables.py baseline/runs/baseline-1234 --csv tables  # a run; CSV files too
    python tools/tables.py deepspeed-multi-node/log --no-plots       # a log/ folder
    python tools/tables.py baseline --against docs/results/h200-2026-12-01  # beside the reference

It reads, for each run, only what is documented: run_metrics.json (docs/metrics.md, schema
versions 1 and 2), trainer_state.json (the Trainer's log history, in the run folder or its
newest checkpoint-N/: all there is of a run killed before its metrics), the nvidia-smi CSVs
log/<run>-gpu-memory-<node>.csv and the host memory logs log/<run>-host-memory-<node>.csv.
Of the job's output log/<run>.out it reads the first line ("run <name> on <host>, ... output
in <DIR>") and, for a run that did not complete, why: the last `error: ...` line (train.py and
the jobs print it last), else SLURM's, a Python exception's or the launcher's last word.

A PATH may be a run folder, a stage's log/ folder, a stage folder, the repository, a results
tree as committed or copied (any depth), or one file of a run. Runs are found by their own
files; each job log is tied to its run folder: the one its first line names where that exists
here, else runs/<name> beside log/, else the nearest run folder of that name (a log written on
another machine names that machine's folders). A stage submitted from the repository root has
its logs in the root's log/: they are taken for the stage's runs. A run reached through several
PATHs is listed once.

--against RESULTS puts each run beside the reference runs of the same configuration and GPU
kind under RESULTS (docs/results/<gpu>), and lists what falls outside their measured spread
(speed, memory, loss, time parts) with its likely cause (tools/against.py).

Below the tables, Notes say what is missing or odd: for each run that did not complete, how
far it got and why; each caveat once, with the runs it concerns. A file that cannot be read
(empty CSV, unreadable JSON, a metrics file of an unknown schema_version) is one line on
stderr; the exit status is 1 only when nothing at all can be reported. The estimates build
the model on the meta device from its config (workshop/models.py): run_metrics.json's
architecture (v2), else the saved model in the run folder, else an architectures.json beside
the results mapping the model's path to a BLOOM size (v1), else the model folder the metrics
name; the plan's columns are workshop/memory_plan.py's predict_run, with what the run does not
record from such a file (its unrecorded()), as tests/test_plan.py checks the plan.
"""
import argparse
import contextlib
import glob
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath

import pandas as pd

from against import CONFIGURATION, ROOM, TIME_ROOM_SECONDS, compare, highest
from workshop.memory_plan import predict_run, unrecorded
from workshop.metrics import METRICS_FILE, SCHEMA_VERSIONS, TIME_PARTS, checkpoints, fixed_cost, read_json
from workshop.models import architecture, bloom_config

COLUMNS = """\
In every table:
  run                the run's folder name (CSV files only: the Markdown shows the label)
  label              what the run is: baseline or ZeRO stage (and offload: optimizer, +param),
                     fast path, gradient checkpointing, precision, GPUs (nodes x GPUs per node
                     on several nodes; CPU ranks without a GPU), and the job id (the run
                     name's last part; the metrics' slurm_job_id)
  stage              the stage folder the run belongs to
Objective 1 (one row per run):
  status             complete; stopped to resume (saved on the time limit's warning,
                     requeued); failed or interrupted (run_metrics.json says so; the Notes say
                     why); without run_metrics.json: no metrics file (trainer_state.json says
                     it finished), killed or running (checkpoints only), failed or logs only
  epochs             epochs evaluated, of those planned where trainer_state.json says
  steps/epoch        optimizer steps per epoch
  train loss         the Trainer's train_loss: mean loss over all steps of the run (blank
                     when the run did not finish)
  eval loss epN      evaluation loss after epoch N (not for runs limited by --max_steps)
  last eval loss, last eval step
                     the run's last evaluation and the optimizer step it came after
  train samples/s    the Trainer's train_samples_per_second: the whole train() call, so
                     start-up, evaluation and checkpoint saving included
  steady samples/s   optimizer steps only, first step and compiling steps excluded, all GPUs
                     together: the speed to compare configurations by. Measured on the CPU
                     (no GPU name and no GPU allocation in run_metrics.json) it says nothing
                     about GPU speed: the Markdown says CPU instead (so do the efficiencies)
  eval samples/s     the Trainer's eval_samples_per_second, mean over the epochs
  EM before, F1 before, EM after, F1 after
                     SQuAD exact match and F1 (%) of the model's greedy answers to the
                     validation questions before and after fine-tuning (answer_quality.py)
Objective 2 (one row per GPU, from nvidia-smi's memory.used, sampled every second):
  node, gpu, name    the host in the CSV's file name, nvidia-smi's index and GPU name
  samples            readings in the CSV
  peak MiB, mean MiB, min MiB
                     memory.used over the whole log, which starts before the model is loaded
                     (min is usually the idle GPU) and includes CUDA context and cache
  total MiB          memory.total: what the GPU has
Where the time went (one row per run, seconds; schema 2 only, blank for version 1 files,
whose wall_seconds began at trainer.train()):
  wall s             from the job's start to run_metrics.json (wall_seconds)
  startup s, compiling s, training steps s, evaluation s, checkpoint saving s,
  answer generation s, final save s, other s
                     time_seconds: they add up to wall s (docs/metrics.md says what each holds)
  fixed cost s       wall s less training steps, evaluation and answer generation: what the
                     job pays whatever its length (start-up, compiling, saving)
Comparison (one row per run):
  ZeRO, offload      ZeRO stage ('-' without DeepSpeed); devices the optimizer states
                     (opt) and parameters (param) are offloaded to
  precision          fp16, bf16 or fp32 (fp32 on the CPU)
  GPUs, nodes        ranks (world size) and nodes of the run
  samples/s, samples/s/GPU
                     steady samples/s (above), in total and divided by GPUs
  peak GPU MiB       highest memory.used of any GPU in the run's nvidia-smi CSVs (every GPU
                     nvidia-smi sees on the node: on a shared node, others' jobs too)
  peak alloc MiB     highest torch.cuda.max_memory_allocated() of any rank (tensors only)
  est. GPU MiB       memory for model states (parameters, gradients, optimizer states) per
                     GPU, from DeepSpeed's own estimators (stage_1_and_2 and stage3
                     estimate_zero{2,3}_model_states_mem_needs, the numbers their *_all_cold
                     functions print) for the run's ZeRO stage, offload, GPUs per node and
                     nodes. They assume fp16/bf16 training; ZeRO-3 assumes zero.Init (the
                     Trainer uses it). ZeRO-1 has no estimator: ZeRO-2's is shown, a lower
                     bound (ZeRO-1 keeps whole gradients); ZeRO stage 0 is ZeRO-2's at one GPU
                     (nothing partitioned). Without DeepSpeed: 16 bytes/parameter, AdamW's
                     fp32 weights (4) + fp32 gradients (4) + two fp32 moments (8), which the
                     Trainer keeps for fp32 and fp16/bf16 (autocast) alike. Activations, CUDA
                     context and allocator cache are not in it.
  plan GPU MiB       the project's own plan (workshop/memory_plan.py's predict_run for the
                     run's settings, as tools/plan.py and tests/test_plan.py use it): one GPU's
                     peak, activations and logits included; compare with peak alloc MiB
  host MiB/rank      highest peak RSS of one rank (ru_maxrss, from run_metrics.json)
  plan host MiB/rank the plan's peak RSS of the rank that saves the model; compare with host MiB/rank
  peak host MiB/node highest reading of the host memory log: the resident memory of one node's
                     whole job (its ranks, and compile workers and op builds where they run)
  est. host MiB/node DeepSpeed's estimate of host memory per node (blank without DeepSpeed)
  plan host MiB/node the plan's host memory of one node's ranks together
  estimate from      the basis of the est. columns; blank with a note when the model's
                     config is not found
Several GPUs against one (a row per run of several GPUs that has a one-GPU run of the same
configuration among the runs: model, ZeRO stage, offload, precision, fast path, compiled blocks,
batch per GPU, accumulation, length, padding, gradient checkpointing, GPU; printed only when
there is one):
  GPUs               ranks of the run
  one GPU            the one-GPU run it is compared with
  scaling            weak: each GPU trained as many samples as the one GPU did (500 rows per
                     GPU: --train_samples $((500*N))); strong: all GPUs together did
  job efficiency     how much of N times the one GPU's work per second the whole job gave:
                     one GPU's job s / job s (weak), / (N x job s) (strong); start-up included
  steady efficiency  steady samples/s / (N x the one GPU's): the training steps alone
  job s, one GPU job s
                     wall s of both jobs
  samples/s, one GPU samples/s
                     steady samples/s of both, all GPUs together
  peak alloc MiB, one GPU peak alloc MiB, saved MiB/GPU
                     peak alloc MiB (above) of both, and what the N GPUs save on each GPU
Plots (in the plots folder): loss.png (train loss per step, eval loss per evaluation) and
gpu-memory.png (memory.used against minutes since the log started), a panel per stage (at
most 8 runs each), a colour per configuration within a panel, each curve labelled at its end,
runs with identical curves under one label; time.png (where the time went, a stacked bar per
run, grouped by stage, a colour per part).
"""
STATUS = {"complete": "complete", "stopped_on_request": "stopped to resume", "failed": "failed",
          "interrupted": "interrupted"}
LOG_FILE = re.compile(r"^(?P<run>.+?)(\.out|-(gpu|host)-memory-(?P<node>.+)\.csv)$")
OUTPUT_LINE = re.compile(r"^run (\S+) on .*output in (.+)$")  # the job's first line
REASONS = [  # why a run failed, best first: in the job's log, and where run_metrics.json's error ranks
    (re.compile(r"^(?!slurmstepd|srun)(?:[\w.-]+: )?error: (.+)"), "{}"),  # train.py's and the jobs' own, last
    (re.compile(r"(CANCELLED AT .+?|.*oom[-_]kill.*?)[ *]*$"), "SLURM: {}"),
    None,  # run_metrics.json's error (the same as train.py's error line; "stopped by signal N")
    (re.compile(r"\b([\w.]+(?:Error|Exception): .+)"), "{}"),
    (re.compile(r"exits with return code = (-?\d+)"), "the launcher: a rank exited with return code {}"),
    (re.compile(r"^srun: error: (.+)"), "srun: {}")]
SKIP_DIRS = re.compile(r"^(\.|checkpoint-|__pycache__|node_modules|tables$)")


class NoData(Exception):
    """A file that exists but holds nothing to report; the message says what is wrong."""


class Refused(Exception):
    """A metrics file this tool does not know how to read; the message names it."""


@dataclass
class Run:
    """One run: where it is, what it left (load), and what the tables say of it (main)."""
    name: str
    run_dir: Path = None  # the Trainer's --output_dir
    log_dir: Path = None  # the stage's log/ folder
    metrics: dict = None  # run_metrics.json; version 1 read with a status (from `complete`)
    state: dict = None  # trainer_state.json with the longest log history
    gpu: pd.DataFrame = None  # the nvidia-smi CSVs, a node column added
    host: pd.DataFrame = None  # the host memory logs, a node column added
    epochs: list = field(default_factory=list)  # dicts: epoch, step, eval_loss, ...
    losses: list = field(default_factory=list)  # (step, loss) of every logged step
    status: str = None  # Objective 1's status; None: nothing to report
    notes: list = field(default_factory=list)  # about this run alone (how far, why it stopped)
    caveats: list = field(default_factory=list)  # said once in the Notes for all runs they concern
    problems: list = field(default_factory=list)  # files that could not be read (stderr)
    label: str = None  # what the run is, unique among the runs reported
    estimate: dict = field(default_factory=dict)  # the comparison's est. and plan columns

    @property
    def m(self):
        return self.metrics or {}

    @property
    def stage(self):
        """The stage the metrics name, else the folder above runs/ or log/."""
        folder = self.log_dir or (self.run_dir.parent if self.run_dir else None)
        return self.m.get("stage") or (folder.parent.name if folder and folder.name in ("log", "runs") else None)

    @property
    def on_cpu(self):
        """Trained without a GPU: no GPU name and no GPU allocation in the metrics."""
        return bool(self.metrics) and not self.m.get("gpu") and not any(
            self.m.get("peak_gpu_memory_allocated_mib") or [])


# Finding the runs ----------------------------------------------------------------------------

def is_run_dir(path):
    """A folder the Trainer wrote to: train.py's metrics, or a checkpoint (a run killed before
    its end has no metrics file, but its checkpoints hold the log history)."""
    return any((path / name).is_file() for name in (METRICS_FILE, "trainer_state.json")) or any(
        path.glob("checkpoint-*/trainer_state.json"))


def first_line(out):
    """(run name, output folder) the job's log names in its first lines, or (None, None)."""
    with contextlib.suppress(OSError):
        with out.open(errors="replace") as lines:
            for line, _ in zip(lines, range(50)):
                if m := OUTPUT_LINE.match(line.strip()):
                    return m[1], m[2].strip()
    return None, None


@dataclass
class Found:
    """What the paths hold: run folders, and job logs (log folder, run name) with the folder
    their first line names."""
    run_dirs: list = field(default_factory=list)
    logs: dict = field(default_factory=dict)  # (log folder, name) -> output folder named, or None


def walk(path, found):
    """Run folders and job logs under path, at any depth (a run folder is not entered)."""
    if is_run_dir(path):
        found.run_dirs.append(path)
        return
    for child in sorted(path.iterdir()):
        if child.is_dir() and not SKIP_DIRS.match(child.name):
            walk(child, found)
        elif child.is_file():
            add_log(child, found)


def add_log(path, found):
    """A job's .out, or a memory CSV, as (folder, run name); an .out that is not a job's log
    (a script's output that holds a job's first line among others) is left out."""
    if not (m := LOG_FILE.match(path.name)):
        return
    if path.suffix == ".out":
        run, output = first_line(path)
        if run is None or m["run"] not in (run, PurePath(output).name):
            return
        found.logs[(path.parent, m["run"])] = output
    else:
        found.logs.setdefault((path.parent, m["run"]), None)


def tie(log_dir, name, output, run_dirs):
    """The run folder of log_dir/<name>.*: the one its first line names where it exists here
    (absolute, or relative to the stage folder), else runs/<name> beside log/, else the
    nearest found run folder named as the first line's folder or as the log."""
    stage = log_dir.parent
    for candidate in ([Path(output), stage / output] if output else []) + [stage / "runs" / name]:
        if candidate.is_dir() and is_run_dir(candidate):
            return candidate
    names = {name} | ({PurePath(output).name} if output else set())
    near = [d for d in run_dirs if d.name in names]
    return max(near, key=lambda d: len(os.path.commonpath([d.resolve(), log_dir.resolve()])), default=None)


def runs_in(paths):
    """The runs the paths hold, each once: run folders, log/ folders, stage folders, results
    trees at any depth, the repository, or single files of a run. A stage folder's logs may be
    in the log/ folder above it (a job submitted from the repository root); those are taken
    when their run folder is in the stage folder."""
    found, above = Found(), Found()
    for path in paths:
        if path.name in (METRICS_FILE, "trainer_state.json"):  # in a run folder or a checkpoint
            walk(path.parent.parent if path.parent.name.startswith("checkpoint-") else path.parent, found)
        elif path.is_file():
            add_log(path, found)
        else:
            walk(path, found)
            if (path / "runs").is_dir() and (path.parent / "log").is_dir():
                walk(path.parent / "log", above)
    runs, tied, ours = [], set(), {d.resolve() for d in found.run_dirs}
    for logs, only_ours in ((found.logs, False), (above.logs, True)):
        for (log_dir, name), output in logs.items():
            run_dir = tie(log_dir, name, output, found.run_dirs)
            if only_ours and (run_dir is None or run_dir.resolve() not in ours):
                continue
            runs.append(Run(name, run_dir=run_dir, log_dir=log_dir))
            tied.add(run_dir and run_dir.resolve())
    for run_dir in found.run_dirs:
        if run_dir.resolve() not in tied:
            beside = run_dir.parent.parent / "log" if run_dir.parent.name == "runs" else None
            runs.append(Run(run_dir.name, run_dir=run_dir, log_dir=beside if beside and beside.is_dir() else None))
    return merge(runs)


def merge(runs):
    """One Run per run, however many of the given paths led to it."""
    def same(a, b):
        return ((a.run_dir and b.run_dir and a.run_dir.resolve() == b.run_dir.resolve())
                or (a.name == b.name and a.log_dir and b.log_dir and a.log_dir.resolve() == b.log_dir.resolve()))
    merged = []
    for run in runs:
        i = next((i for i, r in enumerate(merged) if same(r, run)), None)
        if i is None:
            merged.append(run)
        else:
            merged[i] = replace(merged[i], run_dir=merged[i].run_dir or run.run_dir,
                                log_dir=merged[i].log_dir or run.log_dir)
    return merged


# Reading what a run left ---------------------------------------------------------------------

def parse_time(column):
    """nvidia-smi's "2024/05/01 12:34:56.789" and the host logger's "2024/05/01 12:34:56"."""
    times = pd.to_datetime(column, format="%Y/%m/%d %H:%M:%S.%f", errors="coerce")
    return times.fillna(pd.to_datetime(column, format="mixed", errors="coerce")) if times.isna().any() else times


def read_csv(path, needed):
    """A logger's CSV with its columns named without units ("memory.used [MiB]" -> "memory.used")
    and its values as numbers (" 1234 MiB" -> 1234); rows cut off or unreadable are dropped."""
    try:
        df = pd.read_csv(path, skipinitialspace=True, dtype=str, on_bad_lines="skip")
    except pd.errors.EmptyDataError:
        raise NoData(f"{path} is empty") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise NoData(f"{path} cannot be read ({str(e).splitlines()[0]})") from None
    df.columns = [re.sub(r"\s*\[.*\]$", "", c.strip()) for c in df.columns]
    if not set(needed) <= set(df.columns):
        raise NoData(f"{path} has no column {', '.join(sorted(set(needed) - set(df.columns)))}")
    for c in df.columns.drop(["timestamp", "name"], errors="ignore"):
        df[c] = pd.to_numeric(df[c].str.extract(r"^\s*(-?[\d.]+)", expand=False), errors="coerce")
    df["time"] = parse_time(df["timestamp"])
    df = df.dropna(subset=[needed[-1], "time"])
    if df.empty:
        raise NoData(f"{path} has a header but no readings")
    return df


def logs(run, kind, problems):
    """The run's <run>-<kind>-memory-<node>.csv files as one DataFrame with a node column."""
    frames = []
    for path in sorted(run.log_dir.glob(f"{glob.escape(run.name)}-{kind}-memory-*.csv")) if run.log_dir else []:
        try:
            df = read_csv(path, ["timestamp", "index", "memory.used"] if kind == "gpu" else ["timestamp", "rss_mib"])
            frames.append(df.assign(node=LOG_FILE.match(path.name)["node"]))
        except NoData as e:
            problems.append(str(e))
    return pd.concat(frames, ignore_index=True) if frames else None


def read_metrics(path, problems):
    """run_metrics.json as schema version 2 names it (docs/metrics.md): version 1's `complete`
    read as a status. Refused: a schema_version this tool does not know."""
    if not path or not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path} cannot be read ({type(e).__name__}: {str(e)[:100]}; cut off while written?)")
        return None
    if not isinstance(m, dict):
        problems.append(f"{path} holds no JSON object")
        return None
    version = m.get("schema_version", 1)
    if version not in SCHEMA_VERSIONS:
        raise Refused(f"refused {path}: schema_version {version!r} is unknown to this tool, which "
                      f"reads versions {' and '.join(map(str, SCHEMA_VERSIONS))} (docs/metrics.md)")
    if version == 1:
        m = {**m, "schema_version": 1, "status": "complete" if m.get("complete") else
             "stopped_on_request" if m.get("stopped_on_request_at_step") else "failed"}
    return m


def trainer_state(run_dir):
    """The Trainer's state with the longest log history: the run folder's own
    trainer_state.json (train.py saves it at the end) or the newest checkpoint's (a run
    that did not reach its end)."""
    if not run_dir:
        return None
    states = [read_json(d / "trainer_state.json") for d in [run_dir, *checkpoints(run_dir)[::-1]]]
    return max((s for s in states if isinstance(s, dict)), key=lambda state: state.get("global_step", 0),
               default=None)  # ties: the run folder's


def failure(out, recorded=None):
    """Why a run failed, in one line: the last line of the best kind in REASONS of its job's
    log, or the error its run_metrics.json recorded."""
    text = out.read_text(errors="replace") if out and out.is_file() else ""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)]
    for reason in REASONS:
        if reason is None and recorded:
            return recorded
        if reason and (found := [m[1] for line in lines if (m := reason[0].search(line))]):
            return reason[1].format(found[-1].strip())[:300]
    return None


def load(run):
    """Everything the run left, read once, and what follows from it: status and notes."""
    problems = []
    metrics = read_metrics(run.run_dir / "run_metrics.json" if run.run_dir else None, problems)
    state = trainer_state(run.run_dir)
    history = state["log_history"] if state else []
    if metrics:  # the epochs as train.py summed them up
        epochs = metrics.get("epochs") or []
    else:  # from the Trainer's log history
        epochs = [dict(epoch=round(e["epoch"]), step=e.get("step"), eval_loss=e["eval_loss"],
                       eval_samples_per_second=e.get("eval_samples_per_second"))
                  for e in history if "eval_loss" in e]
    run = replace(run, metrics=metrics, state=state, epochs=epochs, problems=problems,
                  losses=[(e["step"], e["loss"]) for e in history if "loss" in e],
                  gpu=logs(run, "gpu", problems), host=logs(run, "host", problems))
    status, notes = status_of(run)
    return replace(run, status=status, notes=notes, caveats=caveats_of(run))


def progress(run):
    """How far a run got: epochs evaluated, steps, the newest checkpoint."""
    s, m = run.state or {}, run.m
    planned = f" of {s['num_train_epochs']}" if "num_train_epochs" in s else ""
    said = [f"{len(run.epochs)}{planned} epochs evaluated"]
    step, steps = m.get("global_step", s.get("global_step")), m.get("max_steps", s.get("max_steps"))
    if step is not None:
        said.append(f"step {step}" + (f" of {steps}" if steps else ""))
    saved = [d for d in checkpoints(run.run_dir) if (d / "trainer_state.json").is_file()] if run.run_dir else []
    if saved:
        said.append(f"newest {saved[-1].name}")
    return ", ".join(said)


def status_of(run):
    """(status, notes): the first thing to know about a run, and why; status None when the
    run left nothing to report."""
    m = run.m
    why = failure(run.log_dir / f"{run.name}.out" if run.log_dir else None, m.get("error"))
    if m.get("status") == "complete":
        return "complete", []
    if m.get("status") == "stopped_on_request":
        return STATUS["stopped_on_request"], [
            f"stopped on request (the time limit's warning) after step {m.get('stopped_on_request_at_step')}, "
            f"checkpointed, to be resumed; {progress(run)}"]
    if m:
        why = why or "no reason in run_metrics.json nor the job's log"
        return STATUS.get(m["status"], str(m["status"])), [f"{m['status']}: {why}; {progress(run)}"]
    if run.state or run.epochs:
        if run.run_dir and (run.run_dir / "trainer_state.json").is_file():
            return "no metrics file", [f"finished training but left no run_metrics.json; {progress(run)}"]
        return "killed or running", [
            f"no run_metrics.json: killed (SIGKILL, out of memory, node lost) or still running; "
            f"{progress(run)}" + (f"; {why}" if why else "")]
    if run.gpu is not None or run.host is not None or why:
        return ("failed", [f"failed before training: {why}"]) if why else ("logs only", [])
    return None, []


def caveats_of(run):
    """What must be said about a run's numbers, in words shared by every run it applies to."""
    m, said = run.m, []
    if m.get("random_weights"):
        said.append("random weights: speed and memory are real, losses are not")
    if run.metrics and m["schema_version"] == 1:
        said.append("schema version 1 metrics: no time parts (their wall_seconds began at trainer.train())")
    return said


# What the run is -----------------------------------------------------------------------------

def describe(run):
    """What a run is, in a few words: 'ZeRO-2 offload bf16 2x4 GPUs'."""
    m = run.m
    what = f"ZeRO-{m.get('zero_stage', '?')}" if m.get("deepspeed_config") else "baseline"
    offloaded = [short for short, key in (("opt", "offload_optimizer"), ("param", "offload_param"))
                 if m.get(key) not in (None, "none")]
    if offloaded:
        what += " offload" + ("" if offloaded == ["opt"] else " " + "+".join(offloaded))
    what += "".join(f" {name}" for name, key in (("fast path", "fast_path"),
                                                  ("grad. checkpointing", "gradient_checkpointing")) if m.get(key))
    ranks, nodes = m.get("world_size") or 1, m.get("nodes") or 1
    per_node = ranks // nodes if nodes > 1 else ranks
    device = "CPU rank" if run.on_cpu else "GPU"
    count = f"{nodes}x{per_node}" if nodes > 1 else str(ranks)
    return f"{what} {m.get('precision', '?')} {count} {device}{'s' if per_node > 1 else ''}"


def model_of(run):
    """The model in a word: its type and size where the metrics say them (v2: 'bloom-559M'),
    else the last part of its path."""
    if parameters := run.m.get("parameters"):
        size = (f"{parameters / 1e9:.3g}B" if parameters >= 1e9 else f"{parameters / 1e6:.3g}M"
                if parameters >= 1e6 else f"{parameters / 1e3:.3g}k")
        return f"{(run.m.get('architecture') or {}).get('model_type', 'model')}-{size}"
    return Path(str(run.m.get("model") or "?")).name


def labels(runs):
    """A label per run that says what it is and which job: 'baseline fp16 1 GPU (job 1234)',
    preceded by the model where the runs' models differ; a run without metrics keeps its name.
    Labels that would repeat name the run folder."""
    def job(run):
        tail = run.name.rsplit("-", 1)[-1]
        job_id = run.m.get("slurm_job_id") or (tail if tail.isdigit() else None)
        return f"job {job_id}" if job_id else run.name
    models = len({model_of(r) for r in runs if r.metrics}) > 1
    what = [f"{model_of(r) + ' ' if models else ''}{describe(r)}" for r in runs]
    found = [f"{w} ({job(r)})" if r.metrics else r.name for r, w in zip(runs, what)]
    return [f"{w} ({r.stage}/{r.name})" if r.metrics and found.count(label) > 1 else label
            for r, w, label in zip(runs, what, found)]


# Estimates: DeepSpeed's and the project's plan -----------------------------------------------

def model_config(run):
    """The run's model config (see the module's docstring for where it is looked for), or a
    one-line reason why there is none."""
    from transformers import AutoConfig, logging
    logging.set_verbosity_error()
    m, tried = run.m, []
    if arch := dict(m.get("architecture") or {}):
        try:
            return AutoConfig.for_model(arch.pop("model_type", None), **arch)
        except Exception as e:  # an architecture transformers does not know
            return f"run_metrics.json's architecture: {type(e).__name__}: {str(e)[:150]}"
    if run.run_dir and (run.run_dir / "config.json").is_file():
        with contextlib.suppress(Exception):
            return AutoConfig.from_pretrained(run.run_dir)
    model = m.get("model")
    if not model:
        return "no architecture and no model named in run_metrics.json"
    size = unrecorded(run.run_dir, m)["model"] if run.run_dir else None
    if size:  # a BLOOM size named by an architectures.json beside the results
        return bloom_config(size.rsplit("/", 1)[-1])
    stage = run.run_dir.parent.parent if run.run_dir and run.run_dir.parent.name == "runs" else Path(".")
    for source in dict.fromkeys(map(str, [stage / model, model])):  # relative to the stage folder, or a hub id
        try:
            return AutoConfig.from_pretrained(source, local_files_only=True)
        except Exception as e:  # a missing folder, a hub id not cached, an unknown architecture
            tried.append(f"{source}: {type(e).__name__}")
    return "model config not found (" + "; ".join(tried) + ")"


def deepspeed_estimate(m, arch):
    """(GPU MiB, host MiB per node, basis) of model states for the run's configuration (--help)."""
    total, largest = arch.params, arch.largest
    if not m.get("deepspeed_config"):
        return 16 * total / 2**20, None, "16 B/param, AdamW without DeepSpeed"
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs its accelerator on stdout
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    nodes = m.get("nodes") or 1
    per_node = max(m["world_size"] // nodes, 1)
    offload_opt = m.get("offload_optimizer") not in (None, "none")
    offload_param = m.get("offload_param") not in (None, "none")
    stage = m.get("zero_stage") or 0
    if stage == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, per_node, nodes, cpu_offload=offload_opt, cpu_offload_params=offload_param, zero_init=True)
        basis = "DeepSpeed ZeRO-3"
    elif stage in (1, 2):
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, per_node, nodes, cpu_offload=offload_opt)
        basis = "DeepSpeed ZeRO-2" + (" (ZeRO-1: lower bound)" if stage == 1 else "")
    else:  # every GPU holds everything; every rank of a node loads the model on the host
        cpu, _ = estimate_zero2_model_states_mem_needs(total, per_node, nodes, cpu_offload=False)
        _, gpu = estimate_zero2_model_states_mem_needs(total, 1, 1, cpu_offload=False)
        basis = "DeepSpeed ZeRO-2 at 1 GPU (stage 0)"
    return gpu / 2**20, cpu / 2**20, basis + (", offload" if offload_opt or offload_param else "")


PLAN_COLUMNS = ("est. GPU MiB", "est. host MiB/node", "estimate from", "plan GPU MiB", "plan host MiB/rank",
                "plan host MiB/node")


def estimate(run, predict=predict_run):
    """The run with the comparison's estimate columns filled where its model is known, and the
    caveats that come with them. The plan's figures come from predict_run with what the run
    does not record (workshop.memory_plan.unrecorded), as tests/test_plan.py checks them."""
    m, caveats = run.m, list(run.caveats)
    columns = dict.fromkeys(PLAN_COLUMNS)
    config = model_config(run) if run.metrics else None
    if isinstance(config, str):
        caveats.append(f"no memory estimate: {config}")
    elif config is not None:
        gpu, host, basis = deepspeed_estimate(m, architecture(config))
        columns.update({"est. GPU MiB": gpu, "est. host MiB/node": host, "estimate from": basis})
        if m.get("deepspeed_config") and m.get("precision") == "fp32":
            caveats.append("trained in fp32: DeepSpeed's estimate assumes fp16/bf16 (2-byte parameters)")
        known = unrecorded(run.run_dir, m) if run.run_dir else {}
        try:
            plan = predict(m, **{**known, "model": known.get("model") or config})
            columns.update({"plan GPU MiB": plan["gpu_mib"], "plan host MiB/rank": plan["host_mib"],
                            "plan host MiB/node": plan["host_node_mib"]})
        except Exception as e:  # not BLOOM, or settings the plan does not know
            caveats.append(f"no plan: workshop.memory_plan's predict_run failed ({type(e).__name__}: {str(e)[:150]})")
    return replace(run, estimate=columns, caveats=caveats)


# The tables: one function each, without side effects -----------------------------------------

def answer_scores(quality):
    """EM/F1 before and after training, from run_metrics.json's answer_quality (or blanks)."""
    quality = quality or {}
    return {f"{name} {when}": (quality.get(when) or {}).get(key)
            for when in ("before", "after") for name, key in (("EM", "exact_match"), ("F1", "f1"))}


def epoch_losses(run):
    """{N: eval loss after epoch N}: the evaluations at whole epochs of the data (a run limited
    by --max_steps evaluates at its last step, in the middle of an epoch)."""
    m, state = run.m, run.state or {}
    sizes = [m.get(k) for k in ("train_samples", "per_device_train_batch_size", "gradient_accumulation_steps")]
    if all(sizes):  # steps of a whole epoch over every rank
        per_epoch = -(-sizes[0] // (sizes[1] * sizes[2] * (m.get("world_size") or 1)))
    else:
        per_epoch = state.get("max_steps", 0) // max(state.get("num_train_epochs") or 1, 1)
    return {e["epoch"]: e["eval_loss"] for e in run.epochs
            if e.get("epoch") and (not e.get("step") or e["step"] == e["epoch"] * per_epoch)}


def objective1(runs):
    """Loss and speed: one row per run, the eval losses in one column per epoch."""
    rows = []
    for r in runs:
        m = r.m
        final = next((e for e in reversed(r.state["log_history"]) if "train_loss" in e), {}) if r.state else {}
        evals = [e["eval_samples_per_second"] for e in r.epochs if e.get("eval_samples_per_second")]
        rows.append({
            "run": r.name, "label": r.label, "stage": r.stage, "status": r.status,
            "epochs": f"{len(r.epochs)}/{r.state['num_train_epochs']}" if r.state else len(r.epochs) or None,
            "steps/epoch": m.get("steps_per_epoch") or (r.epochs[0].get("step") if r.epochs else None),
            "train loss": m.get("train_loss", final.get("train_loss")),
            **{f"eval loss ep{epoch}": loss for epoch, loss in epoch_losses(r).items()},
            "last eval loss": r.epochs[-1]["eval_loss"] if r.epochs else None,
            "last eval step": r.epochs[-1].get("step") if r.epochs else None,
            "train samples/s": m.get("train_samples_per_second", final.get("train_samples_per_second")),
            "steady samples/s": m.get("steady_train_samples_per_second"),
            "eval samples/s": m.get("eval_samples_per_second") or (sum(evals) / len(evals) if evals else None),
            **answer_scores(m.get("answer_quality"))})
    df = pd.DataFrame(rows)
    losses = sorted((c for c in df.columns if c.startswith("eval loss ep")), key=lambda c: int(c[12:]))
    return df.reindex(columns=["run", "label", "stage", "status", "epochs", "steps/epoch", "train loss",
                               *losses, "last eval loss", "last eval step", "train samples/s",
                               "steady samples/s", "eval samples/s", "EM before", "F1 before", "EM after",
                               "F1 after"]).astype({"steps/epoch": "Int64", "last eval step": "Int64"})


def objective2(runs):
    """GPU memory: peak, mean and minimum of memory.used for each GPU of each node."""
    frames = []
    for r in runs:
        if r.gpu is not None:
            gpu = r.gpu.assign(name=r.gpu["name"] if "name" in r.gpu else "")
            groups = gpu.groupby(["node", "index", "name"], dropna=False)
            stats = groups["memory.used"].agg(["count", "max", "mean", "min"])
            stats["total"] = groups["memory.total"].max() if "memory.total" in gpu else None
            frames.append(stats.reset_index().assign(run=r.name, label=r.label))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True).rename(columns={
        "index": "gpu", "count": "samples", "max": "peak MiB", "mean": "mean MiB", "min": "min MiB",
        "total": "total MiB"})
    df["gpu"] = df["gpu"].astype("Int64")
    return df[["run", "label", "node", "gpu", "name", "samples", "peak MiB", "mean MiB", "min MiB", "total MiB"]]


def time_table(runs):
    """Where the job's time went (schema version 2): wall time, its parts, the fixed cost."""
    rows = []
    for r in runs:
        parts = r.m.get("time_seconds") or {}
        wall = r.m.get("wall_seconds") if parts else None
        rows.append({"run": r.name, "label": r.label, "wall s": wall,
                     **{f"{p.replace('_', ' ')} s": parts.get(p) for p in TIME_PARTS},
                     "fixed cost s": fixed_cost(r.m) if parts else None})
    return pd.DataFrame(rows)


def comparison(runs):
    """The configurations side by side: speed, measured memory and the estimates."""
    rows = []
    for r in runs:
        m = r.m
        offload = ", ".join(f"{short} {m[key]}" for short, key in (("opt", "offload_optimizer"),
                            ("param", "offload_param")) if m.get(key) not in (None, "none"))
        gpus, speed = m.get("world_size"), m.get("steady_train_samples_per_second")
        rows.append({"run": r.name, "label": r.label, "stage": r.stage,
                     "ZeRO": (m.get("zero_stage") if m.get("deepspeed_config") else "-") if m else None,
                     "offload": offload or ("none" if m else None), "precision": m.get("precision"),
                     "GPUs": gpus, "nodes": m.get("nodes"), "samples/s": speed,
                     "samples/s/GPU": speed / gpus if speed and gpus else None,
                     "peak GPU MiB": r.gpu["memory.used"].max() if r.gpu is not None else None,
                     "peak alloc MiB": highest(m.get("peak_gpu_memory_allocated_mib")),
                     "peak host MiB/node": r.host["rss_mib"].max() if r.host is not None else None,
                     "host MiB/rank": highest(m.get("peak_host_rss_mib")), **r.estimate})
    return pd.DataFrame(rows).reindex(columns=[
        "run", "label", "stage", "ZeRO", "offload", "precision", "GPUs", "nodes", "samples/s",
        "samples/s/GPU", "peak GPU MiB", "peak alloc MiB", "est. GPU MiB", "plan GPU MiB",
        "host MiB/rank", "plan host MiB/rank", "peak host MiB/node", "est. host MiB/node", "plan host MiB/node",
        "estimate from"]).astype({"GPUs": "Int64", "nodes": "Int64"})


# What must match for a one-GPU run to be another run's reference in the scaling table
SAME_CONFIGURATION = tuple(k for k in CONFIGURATION if k not in ("world_size", "nodes"))


def scaling(runs):
    """Several GPUs against one: each complete run of N > 1 GPUs beside the first complete one-GPU
    run of the same configuration, as weak or strong scaling by the samples each GPU trained."""
    def key(r):
        return json.dumps([r.m.get(k) for k in SAME_CONFIGURATION], sort_keys=True)

    def samples_per_gpu(r):
        return r.m["global_step"] * r.m["per_device_train_batch_size"] * r.m["gradient_accumulation_steps"]

    done = [r for r in runs if r.m.get("status") == "complete" and r.m.get("steady_train_samples_per_second")
            and r.m.get("wall_seconds") and r.m.get("global_step")]
    single = {}
    for r in done:
        if r.m.get("world_size") == 1:
            single.setdefault(key(r), r)
    rows = []
    for r in done:
        n, one = r.m.get("world_size") or 1, single.get(key(r))
        if n < 2 or one is None:
            continue
        each, alone = samples_per_gpu(r), samples_per_gpu(one)
        kind = "weak" if each == alone else "strong" if each * n == alone else None
        timed = kind and all(run.m.get("time_seconds") for run in (r, one))  # version 1: from train() only
        job = one.m["wall_seconds"] / r.m["wall_seconds"] / (n if kind == "strong" else 1) if timed else None
        speed, speed_one = r.m["steady_train_samples_per_second"], one.m["steady_train_samples_per_second"]
        peak, peak_one = (highest(run.m.get("peak_gpu_memory_allocated_mib")) for run in (r, one))
        rows.append({"run": r.name, "label": r.label, "GPUs": n, "one GPU": one.label, "scaling": kind,
                     "job efficiency": job, "steady efficiency": speed / (n * speed_one),
                     "job s": r.m["wall_seconds"], "one GPU job s": one.m["wall_seconds"],
                     "samples/s": speed, "one GPU samples/s": speed_one,
                     "peak alloc MiB": peak, "one GPU peak alloc MiB": peak_one,
                     "saved MiB/GPU": peak_one - peak if peak and peak_one else None})
    return pd.DataFrame(rows)


def notes(runs):
    """The Notes: each run's own, then each caveat once with the runs it concerns."""
    lines = [f"- {r.label}: {note}" for r in runs for note in r.notes]
    for caveat in dict.fromkeys(c for r in runs for c in r.caveats):
        concerned = [r.label for r in runs if caveat in r.caveats]
        who = "all runs" if len(concerned) == len(runs) > 1 else ", ".join(concerned)
        lines.append(f"- {caveat[0].upper()}{caveat[1:]} — {who}")
    return lines


NOT_ON_CPU = ("samples/s", "efficiency")  # columns whose CPU figures say nothing about a GPU


def markdown(df, digits, empty, cpu=()):
    """df as a Markdown table, its labels in the run column, numbers rounded by column
    (digits: name prefix/suffix -> decimals); the rows of runs on the CPU (labels in cpu) say
    "CPU" instead of a speed or an efficiency."""
    if df.empty:
        return empty
    df = df.drop(columns="run").rename(columns={"label": "run"})
    for c in df.columns:
        d = next((n for affix, n in digits.items() if c.startswith(affix) or c.endswith(affix)), None)
        if d is not None:
            df[c] = pd.to_numeric(df[c], errors="coerce").round(d)
            df[c] = df[c].astype("Int64") if d == 0 else df[c]
    df = df.astype(object).where(df.notna(), None)
    on_cpu = df["run"].isin(cpu)
    for c in [c for c in df.columns if any(k in c for k in NOT_ON_CPU)]:
        df.loc[on_cpu & df[c].notna(), c] = "CPU"
    return df.to_markdown(index=False, missingval="")


# Plots ---------------------------------------------------------------------------------------

def configuration(run):
    """A run's label without its job: runs of one configuration share a colour."""
    return run.label.rsplit(" (", 1)[0] if run.metrics else run.label


def colours(runs):
    """A distinct colour per configuration: tab10, then tab20's dark shades before its light
    ones, then evenly spaced hues."""
    import matplotlib
    keys = list(dict.fromkeys(configuration(r) for r in runs))
    n = len(keys)
    if n <= 10:
        palette = matplotlib.colormaps["tab10"].colors[:n]
    elif n <= 20:
        tab20 = matplotlib.colormaps["tab20"].colors
        palette = (tab20[0::2] + tab20[1::2])[:n]
    else:
        palette = [matplotlib.colormaps["hsv"](i / n) for i in range(n)]
    by_key = dict(zip(keys, palette))
    return {r.label: by_key[configuration(r)] for r in runs}


def by_stage(runs, most=8):
    """(title, runs) panels: the runs of each stage, at most `most` to a panel."""
    stages = {}
    for r in runs:
        stages.setdefault(r.stage or "other", []).append(r)
    return [(f"{stage}" + (f" ({i // most + 1} of {-(-len(rs) // most)})" if len(rs) > most else ""), rs[i:i + most])
            for stage, rs in stages.items() for i in range(0, len(rs), most)]


def same_curves(runs, curve):
    """Groups of runs whose curves are identical (one label says all of them)."""
    groups = {}
    for r in runs:
        groups.setdefault(json.dumps([[round(float(v), 6) for v in point] for point in curve(r)]), []).append(r)
    return list(groups.values())


def label_ends(ax, ends):
    """Direct labels right of the panel, each beside its curve's last value, spread apart."""
    low, high = ax.get_ylim()
    gap, placed = (high - low) * 0.085, []  # a 7-point line of a 3-inch panel
    for y, text, colour in sorted(ends, key=lambda e: e[0]):
        placed.append(max(y, placed[-1] + gap) if placed else y)
        ax.annotate(text, xy=(1, y), xycoords=("axes fraction", "data"), xytext=(1.03, placed[-1]),
                    textcoords=("axes fraction", "data"), color=colour, fontsize=7, va="center",
                    arrowprops=dict(arrowstyle="-", color=colour, lw=0.5), annotation_clip=False)


def panels(plt, count, title):
    """A figure of `count` panels one above the other, room on the right for their labels."""
    fig, axes = plt.subplots(count, 1, figsize=(13, 3.1 * count + 0.9), squeeze=False)
    fig.suptitle(title, y=1 - 0.15 / (3.1 * count + 0.9))
    fig.subplots_adjust(left=0.07, right=0.6, hspace=0.5, top=1 - 0.75 / (3.1 * count + 0.9),
                        bottom=0.5 / (3.1 * count + 0.9))
    return fig, list(axes.flat)


def plot(runs, folder):
    """loss.png, gpu-memory.png and time.png in folder; returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append(folder / name)

    def losses(r):
        return r.losses + [(e["step"], e["eval_loss"]) for e in r.epochs if e.get("step")]

    if curves := [r for r in runs if losses(r)]:
        groups = by_stage(curves)
        fig, axes = panels(plt, len(groups), "Train loss (lines, each step) and eval loss (dots); "
                                             "runs with identical curves share a label")
        for ax, (title, group) in zip(axes, groups):
            ends, colour = [], colours(group)
            for same in same_curves(group, losses):
                r = same[0]
                if r.losses:
                    ax.plot(*zip(*r.losses), "-", color=colour[r.label], alpha=0.8, lw=1)
                if evals := [(e["step"], e["eval_loss"]) for e in r.epochs if e.get("step")]:
                    ax.plot(*zip(*evals), "o", color=colour[r.label], markersize=5)
                names = " = ".join(x.label for x in same) + (" (identical)" if len(same) > 1 else "")
                ends.append((losses(r)[-1][1], names, colour[r.label]))
            ax.set(title=title, xlabel="optimizer step", ylabel="loss")
            ax.grid(alpha=0.3)
            label_ends(ax, ends)
        save(fig, "loss.png")
    if gpu_runs := [r for r in runs if r.gpu is not None]:
        groups = by_stage(gpu_runs)
        fig, axes = panels(plt, len(groups), "GPU memory.used (nvidia-smi); a run's GPUs: solid, "
                                             "dashed, dotted, dash-dot")
        for ax, (title, group) in zip(axes, groups):
            ends, colour = [], colours(group)
            for r in group:
                minutes = (r.gpu["time"] - r.gpu["time"].min()).dt.total_seconds() / 60
                gpus = list(r.gpu.assign(minutes=minutes).groupby(["node", "index"]))
                for i, (_, rows) in enumerate(gpus):
                    ax.plot(rows["minutes"], rows["memory.used"], ["-", "--", ":", "-."][i % 4],
                            color=colour[r.label], lw=1)
                ends.append((r.gpu["memory.used"].max(), r.label + (f" ({len(gpus)} GPUs)" if len(gpus) > 1 else ""),
                             colour[r.label]))
            ax.set(title=title, xlabel="minutes since the log started", ylabel="MiB")
            ax.grid(alpha=0.3)
            label_ends(ax, ends)
        save(fig, "gpu-memory.png")
    if timed := [r for _, stage in by_stage(runs, len(runs)) for r in stage if r.m.get("time_seconds")]:
        fig, ax = plt.subplots(figsize=(14, 0.32 * len(timed) + 1.6))
        left = [0.0] * len(timed)
        for i, part in enumerate(TIME_PARTS):  # a colour of its own for each part
            seconds = [r.m["time_seconds"].get(part) or 0 for r in timed]
            ax.barh(range(len(timed)), seconds, left=left, color=matplotlib.colormaps["tab10"](i),
                    label=part.replace("_", " "))
            left = [a + b for a, b in zip(left, seconds)]
        ax.set_yticks(range(len(timed)), [f"{r.stage}: {r.label}" for r in timed], fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="seconds since the job started", title="Where the time went (grouped by stage)")
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
        save(fig, "time.png")
    return written


def read_runs(paths, problems):
    """The runs the paths hold, loaded and labelled; what cannot be read goes to problems."""
    found = []
    for path in paths:
        runs = runs_in([path]) if path.exists() else []
        found += runs
        if not path.exists():
            problems.append(f"{path} does not exist")
        elif not runs:
            problems.append(f"no run in {path} (no run_metrics.json, checkpoint-*/trainer_state.json, "
                            f"<run>.out or <run>-gpu/host-memory-<node>.csv)")
    runs = []
    for run in merge(found):
        try:
            run = load(run)
        except Refused as e:
            problems.append(str(e))
            continue
        if run.status:
            runs.append(run)
            problems += run.problems
        else:
            problems.append(f"nothing to report for {run.name}: " + "; ".join(run.problems or ["no readable file"]))
    return [replace(r, label=label) for r, label in zip(runs, labels(runs))]


def against_section(runs, results):
    """Markdown: each run's measures outside its references' spread, with their likely causes."""
    problems = []
    flags, said = compare(runs, read_runs([results], problems))
    for problem in problems:
        print(f"tables: {results}: {problem}", file=sys.stderr)
    table = flags.to_markdown(index=False, floatfmt=",.4g") if not flags.empty else (
        "_every measure of the runs that have a reference is within its spread_")
    return "\n".join([table, "", f"Outside: beyond the references' lowest and highest, widened by "
                       f"{', '.join(f'{k} {v:.0%}' for k, v in ROOM.items())} "
                       f"(times also {TIME_ROOM_SECONDS} s)."] + [f"- {line}" for line in said])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, epilog="columns:\n" + COLUMNS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="a run folder, a stage's log/ folder, a stage folder, the repository, or one log file")
    parser.add_argument("--csv", type=Path, metavar="DIR", help="also write the tables as CSV files to DIR")
    parser.add_argument("--plots", type=Path, metavar="DIR", default=Path("tables"),
                        help="where the PNG plots go (default: tables/ in the current folder)")
    parser.add_argument("--no-plots", action="store_true", help="write no plots")
    parser.add_argument("--against", type=Path, metavar="RESULTS",
                        help="beside the reference runs of the same configuration and GPU kind in "
                             "RESULTS (docs/results/<gpu>): what falls outside their spread, and why")
    parser.add_argument("--no-estimate", action="store_true",
                        help="skip the memory estimates (DeepSpeed's and the plan's; they build the model)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("tabulate") is None:  # what DataFrame.to_markdown needs
        sys.exit("tables: the Markdown tables need tabulate: pip install tabulate")

    problems = []
    runs = read_runs(args.paths, problems)
    if not runs:
        sys.exit("tables: nothing to report: " + "; ".join(problems))
    for problem in problems:
        print(f"tables: {problem}", file=sys.stderr)

    if not args.no_estimate:
        runs = [estimate(r) for r in runs]
    tables = {"objective1": objective1(runs), "objective2": objective2(runs), "time": time_table(runs),
              "comparison": comparison(runs), "scaling": scaling(runs)}
    digits = {"est.": 1, "loss": 4, "eval loss": 4, "samples/s": 2, "MiB": 0, "MiB/rank": 0, "MiB/GPU": 0,
              " s": 1, "efficiency": 2}
    on_cpu = [r.label for r in runs if r.on_cpu]
    print("## Objective 1: loss and speed\n\n" + markdown(tables["objective1"], digits, "", on_cpu))
    if on_cpu:
        print(f"\n> **Note**: trained on the CPU (no GPU), so speeds and efficiencies read `CPU`: "
              f"they say nothing about GPU speed (the CSV files keep the numbers): "
              f"{'all runs' if len(on_cpu) == len(runs) > 1 else ', '.join(on_cpu)}.")
    print("\n## Objective 2: GPU memory from nvidia-smi (MiB)\n\n" + markdown(tables["objective2"], digits,
          "_no nvidia-smi CSV found (log/<run>-gpu-memory-<node>.csv)_"))
    timed = tables["time"] if tables["time"]["wall s"].notna().any() else tables["time"].iloc[:0]
    print("\n## Where the time went (seconds)\n\n" + markdown(timed, digits,
          "_no run_metrics.json of schema version 2 (version 1 has no time parts)_"))
    print("\n## Comparison across runs\n\n" + markdown(tables["comparison"], digits, "", on_cpu))
    if not tables["scaling"].empty:
        print("\n## Several GPUs against one\n\n" + markdown(tables["scaling"], digits, "", on_cpu))
    if args.against:
        print(f"\n## Against the reference runs of {args.against}\n\n" + against_section(runs, args.against))
    if lines := notes(runs):
        print("\n## Notes\n\n" + "\n".join(lines))
    if args.csv:
        args.csv.mkdir(parents=True, exist_ok=True)
        for name, df in tables.items():
            df.to_csv(args.csv / f"{name}.csv", index=False)
        print(f"tables: CSV files in {args.csv}/", file=sys.stderr)
    if not args.no_plots:
        for path in plot(runs, args.plots):
            print(f"tables: plot {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
