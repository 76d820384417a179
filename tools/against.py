"""A participant's runs beside the committed reference runs of the same configuration and GPU
kind (tools/tables.py --against docs/results/<gpu>): what falls outside the references'
measured spread, and its likely cause."""
import json

import pandas as pd

from workshop.metrics import TIME_PARTS

# What must match for a reference run to be a run's reference: the configuration, the GPU
# kind, the ranks, and the work (rows, epochs or steps) for the losses and the time parts.
CONFIGURATION = ("architecture", "zero_stage", "offload_optimizer", "offload_param", "precision",
                 "fast_path", "compile_blocks", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "max_length", "pad_to_max_length",
                 "gradient_checkpointing", "gpu", "world_size", "nodes")
SAME_WORK = ("train_samples", "eval_samples", "max_steps", "random_weights", "seed")
# Room around the references' spread: one reference run has none, and a job is never timed
# twice alike (relative, and seconds for the time parts).
ROOM = {"speed": 0.10, "memory": 0.05, "host": 0.15, "loss": 0.01, "time": 0.25}
TIME_ROOM_SECONDS = 3
# Likely causes, by measure and direction (the jobs' logs and docs/results.md say more).
CAUSES = {
    ("steady samples/s", "below"): "another job on the GPU or its node, a GPU held at lower clocks "
    "(nvidia-smi -q -d CLOCK,PERFORMANCE), or too few CPU cores for the data (--cpus-per-task)",
    ("steady samples/s", "above"): "other versions (torch, driver) or another GPU model than the reference's",
    ("peak alloc MiB", "above"): "settings the run does not record differ (longer sequences in your data, "
    "another tokenizer), or other torch/transformers versions",
    ("peak alloc MiB", "below"): "shorter sequences in your data, or other versions than the reference's",
    ("peak GPU MiB", "above"): "another process on the GPU (nvidia-smi lists them): memory.used counts "
    "every process, the run's own tensors are in peak alloc MiB",
    ("host MiB/rank", "above"): "another Python environment (more imported), or the model built on "
    "the host (an older train.py)",
    ("eval loss", "above"): "other data, seed or weights than the reference's (random weights' losses "
    "compare only with random weights), or another precision",
    ("eval loss", "below"): "other data, seed or weights than the reference's",
    ("startup s", "above"): "a slow or cold file system for the environment and the model (the first "
    "job on a node reads them cold; a venv on network storage reads slowly)",
    ("compiling s", "above"): "the compile cache not on shared storage (COMPILE_CACHE, "
    "TORCHINDUCTOR_CACHE_DIR): every job on a new node compiles from scratch",
    ("checkpoint saving s", "above"): "a slow file system for runs/ (network storage): write to the "
    "node's scratch and copy after",
    ("final save s", "above"): "a slow file system for runs/ (network storage): write to the node's "
    "scratch and copy after",
    ("other s", "above"): "DeepSpeed's ops compiled at the job's start: TORCH_EXTENSIONS_DIR not "
    "shared, or shared by two environments (they rebuild each other's ops)",
}
SLOWER = "the GPU slower or shared (see steady samples/s)"  # training steps, evaluation, answers


def highest(values):
    """The largest of a per-rank list from run_metrics.json, ranks without a reading left out."""
    return max((v for v in values or [] if v is not None), default=None)


def key(run, names):
    return json.dumps([run.m.get(k) for k in names], sort_keys=True)


def measures(run):
    """name -> (value, kind of room) of what a run is compared by."""
    m = run.m
    found = {"steady samples/s": (m.get("steady_train_samples_per_second"), "speed"),
             "peak alloc MiB": (highest(m.get("peak_gpu_memory_allocated_mib")), "memory"),
             "peak GPU MiB": (run.gpu["memory.used"].max() if run.gpu is not None else None, "memory"),
             "host MiB/rank": (highest(m.get("peak_host_rss_mib")), "host"),
             "eval loss": (run.epochs[-1]["eval_loss"] if run.epochs else None, "loss")}
    for part in TIME_PARTS:
        found[f"{part.replace('_', ' ')} s"] = ((m.get("time_seconds") or {}).get(part), "time")
    return found


def flag(name, value, spread, room):
    """'above' or 'below' where value falls outside the spread widened by its room, else None."""
    low, high = spread
    extra = TIME_ROOM_SECONDS if room == "time" else 0
    if value > high * (1 + ROOM[room]) + extra:
        return "above"
    if value < low * (1 - ROOM[room]) - extra:
        return "below"
    return None


def cause(name, direction):
    if name in ("training steps s", "evaluation s", "answer generation s") and direction == "above":
        return SLOWER
    return CAUSES.get((name, direction), "")


def compare(mine, references):
    """(DataFrame: one row per run and measure outside the spread, notes, the runs compared):
    each complete run of `mine` beside the complete references of its configuration and GPU kind."""
    done = [r for r in references if r.m.get("status") == "complete"]
    rows, notes, compared_runs = [], [], []
    for run in (r for r in mine if r.m.get("status") == "complete"):
        same = [r for r in done if key(r, CONFIGURATION) == key(run, CONFIGURATION)]
        if not same:
            notes.append(f"{run.label}: no reference run of its configuration on a {run.m.get('gpu') or 'CPU'}")
            continue
        compared_runs.append(run)
        same_work = [r for r in same if key(r, SAME_WORK) == key(run, SAME_WORK)]
        for name, (value, room) in measures(run).items():
            compared = same_work if room in ("loss", "time") else same  # these depend on the work
            values = [v for r in compared if (v := measures(r)[name][0]) is not None]
            if value is None or not values:
                continue
            direction = flag(name, value, (min(values), max(values)), room)
            if direction:
                low, high = min(values), max(values)
                rows.append({"run": run.label, "measure": name, "yours": value,
                             "reference": f"{low:,.4g}" + (f"-{high:,.4g}" if high > low else ""),
                             "outside": direction, "likely cause": cause(name, direction),
                             "references": ", ".join(r.label for r in compared)})
        if not same_work:
            notes.append(f"{run.label}: its references did other work (rows, steps, weights or seed): "
                         f"speed and memory compared, losses and times not")
    return pd.DataFrame(rows), notes, compared_runs
