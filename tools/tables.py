"""The workshop's objective tables, from what the runs left behind; Markdown on stdout.

    python tools/tables.py baseline deepspeed-single-gpu           # stage folders
    python tools/tables.py baseline/runs/baseline-1234 --csv tables  # a run; CSV files too
    python tools/tables.py deepspeed-multi-node/log --no-plots       # a log/ folder

It reads, for each run: run_metrics.json (written by train.py), trainer_state.json (the
Trainer's log history, in the run folder or its newest checkpoint-N/), log/<run>.out, the
nvidia-smi CSVs log/<run>-gpu-memory-<node>.csv and the host memory logs
log/<run>-host-memory-<node>.csv, and reports whatever of them exists.

A PATH may be a run folder (its logs are found in the log/ folder beside its runs/ folder),
a stage's log/ folder (run folders are found through the "output in DIR" line the job
scripts print first), a stage folder, the repository, or one file of a run. A run reached
through several PATHs is listed once.

Below the tables, Notes say what is missing or odd for each run: a run that died mid-way,
an empty or unreadable CSV, why there is no memory estimate. Problems with a PATH go to
stderr; the exit status is 1 only when nothing at all can be reported. The memory estimate
reads the model's config.json from the run folder, and only when there is none the model
named in run_metrics.json (set HF_HUB_OFFLINE=1 where the hub cannot be reached).
"""
import argparse
import ast
import contextlib
import glob
import importlib.util
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

COLUMNS = """\
Objective 1 (one row per run):
  status             complete; stopped to resume (saved on the time limit's warning, requeued);
                     died mid-way (run_metrics.json says complete=false); or why
                     there is no metrics file (killed, time limit, still running)
  epochs             epochs evaluated, of those planned where trainer_state.json says
  steps/epoch        optimizer steps per epoch
  train loss         the Trainer's train_loss: mean loss over all steps of the run, as printed
                     at its end (blank when the run did not finish)
  eval loss epN      evaluation loss after epoch N
  train samples/s    the Trainer's train_samples_per_second: the whole train() call, so
                     start-up, evaluation and checkpoint saving included
  steady samples/s   optimizer steps only, first step excluded (train.py's StepTimer),
                     all GPUs together: the speed to compare configurations by
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
Comparison (one row per run):
  stage              the stage folder the run belongs to
  ZeRO, offload      ZeRO stage ('-' without DeepSpeed); devices the optimizer states
                     (opt) and parameters (param) are offloaded to
  precision          fp16, bf16 or fp32 (fp16 is turned off on machines without a GPU)
  GPUs, nodes        ranks (world size) and nodes of the run
  samples/s, samples/s/GPU
                     steady samples/s (above), in total and divided by GPUs
  peak GPU MiB       highest memory.used of any GPU in the run's nvidia-smi CSVs (every GPU
                     nvidia-smi sees on the node: on a shared node, others' jobs too)
  peak alloc MiB     highest torch.cuda.max_memory_allocated() of any rank (tensors only)
  peak host MiB      highest total resident memory of the training processes of a node
                     (the host memory log)
  host MiB/rank      highest peak RSS of one rank (ru_maxrss, from run_metrics.json)
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
  est. host MiB      DeepSpeed's estimate of host memory per node for the same (blank
                     without DeepSpeed)
  estimate from      which of the above; blank with a note when the model's config is
                     not found (run folder config.json, else run_metrics.json's model)
Plots: loss.png (train loss per step, eval loss per epoch, every run) and gpu-memory.png
(memory.used against minutes since the log started, one panel per run, a line per GPU).
"""
LOG_FILE = re.compile(r"^(?P<run>.+?)(\.out|-(gpu|host)-memory-(?P<node>.+)\.csv)$")
OUTPUT_LINE = re.compile(r"^run (\S+) on .*output in (.+)$", re.M)  # the job script's first line
TRAINER_DICT = re.compile(r"\{'(?:loss|eval_loss|train_runtime)'[^{}]*\}")  # what the Trainer prints
ERROR_LINE = re.compile(r"\b\w+(Error|Exception): |^error: |CANCELLED AT|oom.kill|\[ERROR\]|^Killed")
SKIP_DIRS = re.compile(r"^(\.|checkpoint-|__pycache__|node_modules|tables$)")


class NoData(Exception):
    """A file that exists but holds nothing to report; the message says what is wrong."""


@dataclass
class Run:
    name: str
    run_dir: Path = None  # the Trainer's --output_dir
    log_dir: Path = None  # the stage's log/ folder
    notes: list = field(default_factory=list)


def is_run_dir(path):
    """A folder the Trainer wrote to: train.py's metrics, or a checkpoint (a run killed before
    its end has no metrics file, but its checkpoints hold the log history)."""
    return any((path / name).is_file() for name in ("run_metrics.json", "trainer_state.json")) or any(
        path.glob("checkpoint-*/trainer_state.json"))


def run_of_log(log_dir, name):
    """The run of log/<name>.*, with its run folder: the one the job script's first line names
    ("output in DIR", relative to the stage folder), else ../runs/<name>."""
    run_dir, out = log_dir.parent / "runs" / name, log_dir / f"{name}.out"
    if out.is_file() and (m := OUTPUT_LINE.search(out.read_text(errors="replace")[:4000])):
        run_dir = log_dir.parent / m[2].strip()
    return Run(name, run_dir=run_dir if is_run_dir(run_dir) else None, log_dir=log_dir)


def runs_in(path, depth=3):
    """The runs a path holds: a run folder, a log/ folder, a stage folder, the repository, or
    a single file of a run (run_metrics.json, <run>.out, one of its CSVs).

    A run folder under <stage>/runs/ gets <stage>/log/ for its logs.
    """
    if path.name in ("run_metrics.json", "trainer_state.json"):  # in a run folder or a checkpoint
        return runs_in(path.parent.parent if path.parent.name.startswith("checkpoint-") else path.parent)
    if path.is_file():
        return [run_of_log(path.parent, m["run"])] if (m := LOG_FILE.match(path.name)) else []
    if is_run_dir(path):
        stage = path.parent.parent if path.parent.name == "runs" else None
        return [Run(path.name, run_dir=path, log_dir=stage / "log" if stage else None)]
    names = sorted({m["run"] for p in path.iterdir() if (m := LOG_FILE.match(p.name)) and p.is_file()})
    found = [run_of_log(path, name) for name in names]
    if depth > 0:
        for child in sorted(p for p in path.iterdir() if p.is_dir() and not SKIP_DIRS.match(p.name)):
            found += runs_in(child, depth - 1)
    return found


def merge(runs):
    """One Run per run, however many of the given paths led to it."""
    def same(a, b):
        return ((a.run_dir and b.run_dir and a.run_dir.resolve() == b.run_dir.resolve())
                or (a.name == b.name and a.log_dir and b.log_dir and a.log_dir.resolve() == b.log_dir.resolve()))
    merged = []
    for run in runs:
        if match := next((r for r in merged if same(r, run)), None):
            match.run_dir, match.log_dir = match.run_dir or run.run_dir, match.log_dir or run.log_dir
        else:
            merged.append(run)
    return merged


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


def logs(run, kind):
    """The run's <run>-<kind>-memory-<node>.csv files as one DataFrame with a node column."""
    frames = []
    for path in sorted(run.log_dir.glob(f"{glob.escape(run.name)}-{kind}-memory-*.csv")) if run.log_dir else []:
        try:
            df = read_csv(path, ["timestamp", "index", "memory.used"] if kind == "gpu" else ["timestamp", "rss_mib"])
            frames.append(df.assign(node=LOG_FILE.match(path.name)["node"]))
        except NoData as e:
            run.notes.append(str(e))
    return pd.concat(frames, ignore_index=True) if frames else None


def read_out(path):
    """What the Trainer printed (eval dicts, the final train dict) and the last error line.

    Only a fallback for the numbers: the printed values are rounded, and run_metrics.json
    and trainer_state.json hold them exactly. The error line says why a run died.
    """
    if not path or not path.is_file():
        return {}
    text = path.read_text(errors="replace")
    printed = []
    for d in TRAINER_DICT.findall(text):
        with contextlib.suppress(ValueError, SyntaxError, TypeError):  # a line cut or garbled
            printed.append({k: float(v) for k, v in ast.literal_eval(d).items()})
    errors = [line.strip() for line in re.split(r"[\r\n]+", text) if ERROR_LINE.search(line.strip())]
    exceptions = [line for line in errors if re.search(r"\b\w+(Error|Exception): ", line)]
    return dict(evals=[d for d in printed if "eval_loss" in d],
                train=next((d for d in printed if "train_runtime" in d), None),
                error=(exceptions or errors or [None])[-1])


def trainer_state(run_dir):
    """The Trainer's state with the longest log history: the run folder's own
    trainer_state.json (train.py saves it at the end) or the newest checkpoint's (a run
    that did not reach its end)."""
    if not run_dir:
        return None
    checkpoints = sorted(run_dir.glob("checkpoint-*/trainer_state.json"),
                         key=lambda p: int(p.parent.name.split("-")[1]))
    states = []
    for path in [run_dir / "trainer_state.json"] + checkpoints[::-1]:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            states.append(json.loads(path.read_text()))
    return max(states, key=lambda state: state.get("global_step", 0), default=None)  # ties: the run folder's


def load(run):
    """Everything a run left, read once; run.notes collects what is missing or odd."""
    metrics_file = run.run_dir / "run_metrics.json" if run.run_dir else None
    run.metrics = None
    if metrics_file and metrics_file.is_file():
        try:
            run.metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError:
            run.notes.append(f"{metrics_file} is not valid JSON (cut off while written?)")
    run.state = trainer_state(run.run_dir)
    run.out = read_out(run.log_dir / f"{run.name}.out" if run.log_dir else None)
    run.gpu, run.host = logs(run, "gpu"), logs(run, "host")
    history = run.state["log_history"] if run.state else []
    if run.metrics:  # the epochs as train.py summed them up
        run.epochs = run.metrics["epochs"]
    else:  # from the Trainer's log history, else from what it printed
        evals = [e for e in history if "eval_loss" in e] or run.out.get("evals", [])
        run.epochs = [dict(epoch=round(e["epoch"]), step=e.get("step"), eval_loss=e["eval_loss"],
                           eval_samples_per_second=e.get("eval_samples_per_second")) for e in evals]
    run.losses = [(e["step"], e["loss"]) for e in history if "loss" in e]
    run.status = status(run)
    return run


def status(run):
    """complete / died mid-way / ...: the first thing to know about a run, and why; None when
    the run left nothing to report."""
    m, s, out = run.metrics, run.state, run.out
    planned = f" of {s['num_train_epochs']}" if s else ""
    where = f"; {len(run.epochs)}{planned} epochs evaluated"
    where += f", step {s['global_step']} of {s['max_steps']} checkpointed" if s else ""
    error = f"; last error in {run.name}.out: {out['error'][:200]}" if out.get("error") else ""
    if m and m.get("complete"):
        return "complete"
    if m and m.get("stopped_on_request_at_step"):
        run.notes.append(f"stopped on request (the time limit's warning) after step "
                         f"{m['stopped_on_request_at_step']}, checkpointed, to be resumed{where}")
        return "stopped to resume"
    if m:
        run.notes.append(f"died mid-way: run_metrics.json says complete=false{where}{error}; reporting what exists")
        return "died mid-way"
    if s or run.epochs:
        if out.get("train"):
            run.notes.append(f"finished, but no run_metrics.json{where}; reporting what exists")
            return "no metrics file"
        run.notes.append(f"no run_metrics.json: killed, out of time or still running{where}{error}; "
                         "reporting what exists")
        return "stopped or running"
    if run.gpu is not None or run.host is not None or out.get("error"):
        run.notes.append(f"no metrics and no evaluation found, only logs{error}")
        return "failed" if out.get("error") else "logs only"
    return None


SIZES = {}  # config source -> model_size's answer: each model is built once


def model_size(run):
    """(total parameters, largest layer's parameters) of the run's model, built on the meta
    device from its config (no weights read), or a one-line reason why not."""
    candidates = [p.parent for p in sorted(run.run_dir.glob("**/config.json"))][:1] if run.run_dir else []
    if model := (run.metrics or {}).get("model"):
        stage = run.run_dir.parent.parent if run.run_dir and run.run_dir.parent.name == "runs" else Path(".")
        candidates.append(stage / model if (stage / model).is_dir() else model)
    if not candidates:
        return "no config.json in the run folder and no model named in run_metrics.json"
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, logging
    logging.set_verbosity_error()
    for source in map(str, candidates):
        if source not in SIZES:
            try:  # the local cache first: no waiting on the hub when offline
                try:
                    config = AutoConfig.from_pretrained(source, local_files_only=True)
                except OSError:
                    config = AutoConfig.from_pretrained(source)
                with torch.device("meta"):
                    built = AutoModelForCausalLM.from_config(config)
                # parameters() yields tied weights (BLOOM's embeddings and lm_head) once.
                SIZES[source] = (sum(p.numel() for p in built.parameters()),
                                 max(sum(p.numel() for p in m.parameters(recurse=False)) for m in built.modules()))
            except Exception as e:  # an offline hub id, a missing folder, an unknown architecture
                SIZES[source] = f"{source}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:150]}"
        if isinstance(SIZES[source], tuple):
            return SIZES[source]
    return "model config not found (" + "; ".join(SIZES[str(c)] for c in candidates) + ")"


def estimate(m, size):
    """(GPU MiB, host MiB, basis) of model states for the run's configuration (see --help)."""
    total, largest = size
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


def answer_scores(quality):
    """EM/F1 before and after training, from run_metrics.json's answer_quality (or blanks)."""
    quality = quality or {}
    return {f"{name} {when}": (quality.get(when) or {}).get(key)
            for when in ("before", "after") for name, key in (("EM", "exact_match"), ("F1", "f1"))}


def objective1(runs):
    """Loss and speed: one row per run, the eval losses in one column per epoch."""
    rows = []
    for r in runs:
        m, train = r.metrics or {}, r.out.get("train") or {}
        evals = [e["eval_samples_per_second"] for e in r.epochs if e.get("eval_samples_per_second")]
        rows.append({
            "run": r.label, "stage": m.get("stage", r.stage), "status": r.status,
            "epochs": f"{len(r.epochs)}/{r.state['num_train_epochs']}" if r.state else len(r.epochs) or None,
            "steps/epoch": m.get("steps_per_epoch") or (r.epochs[0].get("step") if r.epochs else None),
            "train loss": m.get("train_loss", train.get("train_loss")),
            **{f"eval loss ep{e['epoch']}": e["eval_loss"] for e in r.epochs},
            "train samples/s": m.get("train_samples_per_second", train.get("train_samples_per_second")),
            "steady samples/s": m.get("steady_train_samples_per_second"),
            "eval samples/s": m.get("eval_samples_per_second") or (sum(evals) / len(evals) if evals else None),
            **answer_scores(m.get("answer_quality"))})
    df = pd.DataFrame(rows)
    losses = sorted((c for c in df.columns if c.startswith("eval loss")), key=lambda c: int(c.split("ep")[-1]))
    rest = [c for c in df.columns if c not in losses]
    return df[rest[:6] + losses + rest[6:]].astype({"steps/epoch": "Int64"})


def objective2(runs):
    """GPU memory: peak, mean and minimum of memory.used for each GPU of each node."""
    frames = []
    for r in runs:
        if r.gpu is not None:
            gpu = r.gpu.assign(name=r.gpu["name"] if "name" in r.gpu else "")
            groups = gpu.groupby(["node", "index", "name"], dropna=False)
            stats = groups["memory.used"].agg(["count", "max", "mean", "min"])
            stats["total"] = groups["memory.total"].max() if "memory.total" in gpu else None
            frames.append(stats.reset_index().assign(run=r.label))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True).rename(columns={
        "index": "gpu", "count": "samples", "max": "peak MiB", "mean": "mean MiB", "min": "min MiB",
        "total": "total MiB"})
    df["gpu"] = df["gpu"].astype("Int64")
    return df[["run", "node", "gpu", "name", "samples", "peak MiB", "mean MiB", "min MiB", "total MiB"]]


def comparison(runs, estimates=True):
    """The configurations side by side: speed, measured memory and DeepSpeed's estimate."""
    rows = []
    for r in runs:
        m = r.metrics or {}
        offload = ", ".join(f"{short} {m[key]}" for short, key in (("opt", "offload_optimizer"),
                            ("param", "offload_param")) if m.get(key) not in (None, "none"))
        gpus, speed = m.get("world_size"), m.get("steady_train_samples_per_second")
        highest = lambda key: max((v for v in m.get(key) or [] if v is not None), default=None)
        row = {"run": r.label, "stage": m.get("stage", r.stage),
               "ZeRO": (m.get("zero_stage") if m.get("deepspeed_config") else "-") if m else None,
               "offload": offload or ("none" if m else None), "precision": m.get("precision"),
               "GPUs": gpus, "nodes": m.get("nodes"), "samples/s": speed,
               "samples/s/GPU": speed / gpus if speed and gpus else None,
               "peak GPU MiB": r.gpu["memory.used"].max() if r.gpu is not None else None,
               "peak alloc MiB": highest("peak_gpu_memory_allocated_mib"),
               "peak host MiB": r.host["rss_mib"].max() if r.host is not None else None,
               "host MiB/rank": highest("peak_host_rss_mib"),
               "est. GPU MiB": None, "est. host MiB": None, "estimate from": None}
        if m and estimates:
            size = model_size(r)
            if isinstance(size, tuple):
                row["est. GPU MiB"], row["est. host MiB"], row["estimate from"] = estimate(m, size)
                if m.get("deepspeed_config") and m.get("precision") == "fp32":
                    r.notes.append("trained in fp32: DeepSpeed's estimate assumes fp16/bf16 (2-byte parameters)")
            else:
                r.notes.append(f"no memory estimate: {size}")
        elif not m:
            r.notes.append("no run_metrics.json: configuration unknown, no memory estimate")
        rows.append(row)
    return pd.DataFrame(rows).astype({"GPUs": "Int64", "nodes": "Int64"})


def markdown(df, digits, empty):
    """df as a Markdown table, numbers rounded by column (digits: name prefix/suffix -> decimals)."""
    if df.empty:
        return empty
    df = df.copy()
    for c in df.columns:
        d = next((n for affix, n in digits.items() if c.startswith(affix) or c.endswith(affix)), None)
        if d is not None:
            df[c] = pd.to_numeric(df[c], errors="coerce").round(d)
            df[c] = df[c].astype("Int64") if d == 0 else df[c]
    return df.astype(object).where(df.notna(), None).to_markdown(index=False, missingval="")


def plot(runs, folder):
    """loss.png and gpu-memory.png in folder; returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    curves = [r for r in runs if r.losses or any(e.get("step") for e in r.epochs)]
    if curves:
        fig, ax = plt.subplots(figsize=(9, 5))
        for i, r in enumerate(curves):
            if r.losses:
                ax.plot(*zip(*r.losses), "-", color=f"C{i % 10}", alpha=0.8, label=f"{r.label} train")
            if evals := [(e["step"], e["eval_loss"]) for e in r.epochs if e.get("step")]:
                ax.plot(*zip(*evals), "o--", color=f"C{i % 10}", markersize=7, label=f"{r.label} eval")
        ax.set(xlabel="optimizer step", ylabel="loss", title="Train loss (each step) and eval loss (each epoch)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(folder / "loss.png", dpi=120)
        plt.close(fig)
        written.append(folder / "loss.png")
    if gpu_runs := [r for r in runs if r.gpu is not None]:
        fig, axes = plt.subplots(len(gpu_runs), 1, figsize=(9, 2.6 * len(gpu_runs) + 0.6), sharey=True, squeeze=False)
        for ax, r in zip(axes[:, 0], gpu_runs):
            minutes = (r.gpu["time"] - r.gpu["time"].min()).dt.total_seconds() / 60
            for (node, gpu), rows in r.gpu.assign(minutes=minutes).groupby(["node", "index"]):
                ax.plot(rows["minutes"], rows["memory.used"], label=f"{node} GPU {gpu:g}")
            ax.set(title=r.label, ylabel="memory.used (MiB)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small", loc="upper left", ncol=4)
        axes[-1, 0].set_xlabel("minutes since the log started")
        fig.tight_layout()
        fig.savefig(folder / "gpu-memory.png", dpi=120)
        plt.close(fig)
        written.append(folder / "gpu-memory.png")
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, epilog="columns:\n" + COLUMNS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="a run folder, a stage's log/ folder, a stage folder, the repository, or one log file")
    parser.add_argument("--csv", type=Path, metavar="DIR", help="also write the tables as CSV files to DIR")
    parser.add_argument("--plots", type=Path, metavar="DIR", default=Path("tables"),
                        help="where the PNG plots go (default: tables/ in the current folder)")
    parser.add_argument("--no-plots", action="store_true", help="write no plots")
    parser.add_argument("--no-estimate", action="store_true",
                        help="skip DeepSpeed's memory estimate (it builds the model from its config)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("tabulate") is None:  # what DataFrame.to_markdown needs
        sys.exit("tables: the Markdown tables need tabulate: pip install tabulate")

    found, problems = [], []
    for path in args.paths:
        runs = runs_in(path) if path.exists() else []
        found += runs
        if not path.exists():
            problems.append(f"{path} does not exist")
        elif not runs:
            problems.append(f"no run in {path} (no run_metrics.json, checkpoint-*/trainer_state.json, "
                            f"<run>.out or <run>-gpu/host-memory-<node>.csv)")
    runs = []
    for run in map(load, merge(found)):
        if run.status:
            runs.append(run)
        else:
            problems.append(f"nothing to report for {run.name}: " + "; ".join(run.notes or ["no readable file"]))
    if not runs:
        sys.exit("tables: nothing to report: " + "; ".join(problems))
    for problem in problems:
        print(f"tables: {problem}", file=sys.stderr)
    for run in runs:  # the stage: the folder above runs/ or log/
        folder = run.log_dir or (run.run_dir.parent if run.run_dir else None)
        run.stage = folder.parent.name if folder and folder.name in ("log", "runs") else None
    names = [r.name for r in runs]
    for run in runs:
        run.label = f"{run.stage}/{run.name}" if names.count(run.name) > 1 and run.stage else run.name

    tables = {"objective1": objective1(runs), "objective2": objective2(runs),
              "comparison": comparison(runs, not args.no_estimate)}
    digits = {"est.": 1, "loss": 4, "eval loss": 4, "samples/s": 2, "MiB": 0, "MiB/rank": 0}
    print("## Objective 1: loss and speed\n\n" + markdown(tables["objective1"], digits, ""))
    print("\n## Objective 2: GPU memory from nvidia-smi (MiB)\n\n" + markdown(tables["objective2"], digits,
                  "_no nvidia-smi CSV found (log/<run>-gpu-memory-<node>.csv)_"))
    print("\n## Comparison across runs\n\n" + markdown(tables["comparison"], digits, ""))
    notes = [f"- {r.label}: {n}" for r in runs for n in r.notes]
    if notes:
        print("\n## Notes\n\n" + "\n".join(notes))
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
