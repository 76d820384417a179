"""What a run left behind, found and read for tools/tables.py: run folders at any depth, job
logs tied to their run folders, run_metrics.json (either schema), trainer_state.json, the
nvidia-smi and host memory CSVs, and what follows from them (status, why it stopped)."""
import contextlib
import glob
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath

import pandas as pd

from workshop.metrics import METRICS_FILE, SCHEMA_VERSIONS, checkpoints, read_json

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
# Not searched below a PATH: hidden folders (.venv, .git), checkpoints (read with their run),
# the plots' folder, and docs/ (the committed reference runs: give docs/results/... to read them)
SKIP_DIRS = re.compile(r"^(\.|checkpoint-|__pycache__|node_modules|tables$|docs$)")


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
        """The stage the metrics name, else the folder above runs/, else above log/ (which may be
        the repository's, for a job submitted from there)."""
        folders = [f for f in (self.run_dir.parent if self.run_dir else None, self.log_dir)
                   if f and f.name in ("log", "runs")]
        return self.m.get("stage") or (folders[0].parent.name if folders else None)

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
    (absolute; or the end of its path below the folder above log/: the stage folder, or the
    repository for a job submitted from there), else runs/<name> beside log/, else the nearest
    found run folder named as the first line's folder or as the log."""
    above, parts = log_dir.parent, PurePath(output).parts if output else ()
    tails = [above / Path(*parts[i:]) for i in range(len(parts)) if not PurePath(*parts[i:]).is_absolute()]
    for candidate in ([Path(output)] if output else []) + tails + [above / "runs" / name]:
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


def used_gpus(gpu, metrics):
    """The readings of the GPUs the run used: nvidia-smi lists every GPU of the node, idle ones
    too, so on each node the run's ranks there (world_size / nodes) whose memory rose highest.
    Without metrics (a run that left only logs), every GPU."""
    if gpu is None or not metrics or not metrics.get("world_size"):
        return gpu
    per_node = max(metrics["world_size"] // (metrics.get("nodes") or 1), 1)
    peaks = gpu.groupby(["node", "index"])["memory.used"].max()
    used = peaks.groupby(level="node", group_keys=False).nlargest(per_node).index
    return gpu[pd.MultiIndex.from_frame(gpu[["node", "index"]]).isin(used)].reset_index(drop=True)


def while_held(readings, share=0.5):
    """The readings from the first to the last at `share` of their peak or more: while the run
    held the GPU (nvidia-smi's log starts before the model is loaded and may end after)."""
    held = (readings >= share * readings.max()).to_numpy().nonzero()[0]
    return readings.iloc[held[0]:held[-1] + 1] if len(held) else readings


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
                  gpu=used_gpus(logs(run, "gpu", problems), metrics), host=logs(run, "host", problems))
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
