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
PATHs is listed once. Below a PATH, docs/ is not searched (the repository's own reference runs:
name docs/results/... to read them).

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
import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path, PurePath

import pandas as pd

from against import CONFIGURATION, ROOM, TIME_ROOM_SECONDS, compare, highest
from run_files import Refused, load, merge, runs_in, while_held
from table_plots import plot
from workshop.memory_plan import predict_run, unrecorded
from workshop.metrics import TIME_PARTS, fixed_cost
from workshop.models import architecture, bloom_config

COLUMNS = """\
In every table:
  run                the run's folder name (CSV files only: the Markdown shows the label)
  label              what the run is: the model where the runs' models differ (its folder's
                     or hub id's last part and its parameters: Llama-3.2-1B 1.24e9), baseline
                     or ZeRO stage (and offload: optimizer, +param), fast path, gradient
                     checkpointing, precision, the GPUs it used (how many, nodes x per node
                     on several nodes, and which GPU where the metrics name it; CPU ranks
                     without a GPU), and the job id (the run name's last part; the metrics'
                     slurm_job_id)
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
                     validation questions before and after fine-tuning (workshop/answers.py)
Objective 2 (one row per GPU the run used, from nvidia-smi's memory.used, sampled every
second; nvidia-smi lists every GPU of the node: those the run used are, on each node, as many
as its ranks there, the ones whose memory rose highest):
  node, gpu, name    the host in the CSV's file name, nvidia-smi's index and GPU name
  samples            readings in the CSV
  peak MiB           the highest reading, CUDA context and PyTorch's cache included
  mean MiB, min MiB  while the run held the GPU: from its first reading at half the peak or
                     more to its last (the log starts before the model is loaded)
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
Against the reference runs (--against; a row per run and measure outside the spread):
  measure            steady samples/s, peak alloc MiB, peak GPU MiB, host MiB/rank (above), the
                     last eval loss, or a time part (where the time went)
  yours, reference   the run's value; the references' lowest-highest (one value: one reference)
  outside            above or below the spread, widened by the room the Markdown states
  likely cause       what usually makes that measure differ
  references         the reference runs of the same configuration, GPU kind and count
Plots (in the plots folder): loss.png (train loss per step, eval loss per evaluation) and
gpu-memory.png (memory.used against minutes since the log started), a panel per stage (at
most 8 runs each), a colour per configuration within a panel, each curve labelled at its end,
runs with identical curves under one label; time.png (where the time went, a stacked bar per
run, grouped by stage, a colour per part).
"""


# What the run is -----------------------------------------------------------------------------

def describe(run):
    """What a run is, in a few words: 'ZeRO-2 offload bf16 2x4 H200' (the GPU as the metrics
    name it; schema version 1 does not: 'GPUs')."""
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
    count = f"{nodes}x{per_node}" if nodes > 1 else str(ranks)
    if run.on_cpu:
        device = "CPU rank" + ("s" if per_node > 1 else "")
    else:
        device = gpu_name(m.get("gpu")) or "GPU" + ("s" if per_node > 1 else "")
    return f"{what} {m.get('precision', '?')} {count} {device}"


def gpu_name(name):
    """The GPU as a label says it: 'NVIDIA H100 80GB HBM3' -> 'H100 80GB'; None when unknown."""
    words = str(name or "").removeprefix("NVIDIA ").split()
    return " ".join(words[:2] if len(words) > 1 and words[1].endswith("GB") else words[:1]) or None


def model_of(run):
    """The model in a few words: the last part of its folder or hub id, and its parameters where
    the metrics count them (v2): 'Llama-3.2-1B 1.24e9'. A folder named just `model` (prepared/,
    a tiny one) is named by its type instead ('bloom 1.33e5')."""
    m = run.m
    name = PurePath(str(m.get("model") or "?")).name
    if name == "model":
        name = (m.get("architecture") or {}).get("model_type") or name
    if parameters := m.get("parameters"):
        mantissa, exponent = f"{parameters:.2e}".split("e")
        return f"{name} {mantissa}e{int(exponent)}"
    return name


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
        try:
            gpu, host, basis = deepspeed_estimate(m, architecture(config))
            columns.update({"est. GPU MiB": gpu, "est. host MiB/node": host, "estimate from": basis})
        except Exception as e:  # a model workshop.models cannot build on the meta device
            caveats.append(f"no DeepSpeed estimate: {type(e).__name__}: {str(e)[:150]}")
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
            stats = groups["memory.used"].agg(["count", "max"])
            held = groups["memory.used"].apply(while_held)
            stats["mean"] = held.groupby(level=[0, 1, 2], dropna=False).mean()
            stats["min"] = held.groupby(level=[0, 1, 2], dropna=False).min()
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
    flags, said, compared = compare(runs, read_runs([results], problems))
    for problem in problems:
        print(f"tables: {results}: {problem}", file=sys.stderr)
    if not compared:
        table = (f"_nothing compared: no run has a complete reference run of its configuration, "
                 f"GPU kind and count in {results}_")
    elif flags.empty:
        table = (f"_every measure of the {len(compared)} run(s) compared is within its references' "
                 f"spread_")
    else:
        table = flags.to_markdown(index=False, floatfmt=",.4g")
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
    digits = {"est.": 1, "loss": 4, "eval loss": 4, "samples/s": 2, "MiB": 0, "MiB/rank": 0, "MiB/node": 0,
              "MiB/GPU": 0, " s": 1, "efficiency": 2}
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
