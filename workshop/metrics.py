"""run_metrics.json's names (docs/metrics.md), shared by the run that writes it and the tools
that read it."""
import json
import re
import signal
from pathlib import Path

from workshop.squad import memorised

SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)  # what the tools read; a file without schema_version is version 1
METRICS_FILE = "run_metrics.json"
SETTINGS_FILE = "run_settings.json"  # what a resumed run must share with the run it continues
TIME_PARTS = ("startup", "compiling", "training_steps", "evaluation", "checkpoint_saving",
              "answer_generation", "final_save", "other")
WORK = ("training_steps", "evaluation", "answer_generation")  # the rest is the fixed cost
SAVE_AND_STOP_FILE = "save-and-stop"  # the .slurm jobs create it on SLURM's time-limit warning
STOP_WITHOUT_SAVING_FILE = "stop-without-saving"  # and this on a SIGTERM that is no preemption
# The exit statuses the jobs act on: 0 complete, 1 refused or failed (`error: ...` last),
# 128 + signal when killed (143: SIGTERM), and:
STOPPED_TO_RESUME = 75  # EX_TEMPFAIL, "try again": stopped on request with a checkpoint


def fixed_cost(metrics):
    """Seconds a job pays whatever its length: its wall time less the work (WORK)."""
    parts = metrics.get("time_seconds")
    return metrics["wall_seconds"] - sum(parts.get(p) or 0 for p in WORK) if parts else None


def checkpoint_step(folder):
    """The optimizer step of a checkpoint-N folder (-1 for a name without one)."""
    number = Path(folder).name.rpartition("-")[2]
    return int(number) if number.isdigit() else -1


def checkpoints(run_dir):
    """A run folder's checkpoint-N folders, oldest step first."""
    return sorted(Path(run_dir).glob("checkpoint-*"), key=checkpoint_step)


def is_complete(checkpoint):
    """Whether a checkpoint was written to its end: the Trainer writes trainer_state.json last."""
    return (Path(checkpoint) / "trainer_state.json").is_file()


def newest_checkpoint(run_dir):
    """The newest complete checkpoint, the one a run resumes from, or None."""
    complete = [f for f in checkpoints(run_dir) if is_complete(f)]
    return complete[-1] if complete else None


def mib(n_bytes):
    return f"{n_bytes / 2**20:,.0f} MiB" if n_bytes >= 10 * 2**20 else f"{n_bytes / 2**20:.1f} MiB"


def summary_lines(metrics, path):
    """The lines a run ends with (train.py prints them; a job prints them again where its
    launchers' lines came after them): the loss of each epoch, the answers, where the job's
    time went, the metrics file, and how it stopped when it did not complete."""
    def number(value):
        return "-" if value is None else f"{value:.4f}"
    lines = [f"epoch {e['epoch']}: train_loss {number(e['train_loss'])} eval_loss {number(e['eval_loss'])}"
             for e in metrics["epochs"]]
    if metrics.get("validation_rows_in_train"):
        lines.append(f"warning: {memorised(metrics['validation_rows_in_train'], metrics['eval_samples'])}")
    quality = metrics.get("answer_quality")
    if quality and quality["before"] and quality["after"]:
        lines.append("answers to {samples} validation questions: exact match {0[exact_match]:.1f} -> "
                     "{1[exact_match]:.1f}, F1 {0[f1]:.1f} -> {1[f1]:.1f} (before -> after training)"
                     .format(quality["before"], quality["after"], samples=quality["after"]["samples"]))
    parts = metrics["time_seconds"]
    lines.append(f"job time {metrics['wall_seconds']:.1f} s: " + ", ".join(
        f"{name.replace('_', ' ')} {parts[name]:.1f}" for name in TIME_PARTS))
    lines.append(f"metrics: {path}")
    run_dir, step, last = Path(path).parent, metrics["global_step"], metrics["max_steps"]
    if metrics["status"] == "stopped_on_request":
        lines.append(f"stopped on request ({run_dir / SAVE_AND_STOP_FILE}) after step "
                     f"{metrics['stopped_on_request_at_step']} of {last}: checkpoint-"
                     f"{metrics['stopped_on_request_at_step']} saved; run again with --output_dir "
                     f"{run_dir} to resume")
    elif metrics["status"] == "interrupted":
        newest, number = newest_checkpoint(run_dir), re.search(r"signal (\d+)", metrics["error"] or "")
        how = f"by {signal.Signals(int(number[1])).name}" if number else f"({metrics['error']})"
        lines.append(f"interrupted {how} after step {step} of {last}: " + (
            f"run again with --output_dir {run_dir} to resume from {newest.name}" if newest else
            f"no checkpoint was saved: run again with --output_dir {run_dir} to start afresh"))
    return lines


def read_json(path):
    """A JSON file's content, or None where it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
