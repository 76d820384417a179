"""run_metrics.json's names (docs/metrics.md), shared by the run that writes it and the tools
that read it."""
import json
from pathlib import Path

SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)  # what the tools read; a file without schema_version is version 1
METRICS_FILE = "run_metrics.json"
SETTINGS_FILE = "run_settings.json"  # what a resumed run must share with the run it continues
TIME_PARTS = ("startup", "compiling", "training_steps", "evaluation", "checkpoint_saving",
              "answer_generation", "final_save", "other")
WORK = ("training_steps", "evaluation", "answer_generation")  # the rest is the fixed cost
# The exit statuses the jobs act on: 0 complete, 1 refused or failed (`error: ...` last),
# 128 + signal when killed (143: SIGTERM), and:
STOPPED_TO_RESUME = 75  # EX_TEMPFAIL, "try again": stopped on request with a checkpoint


def fixed_cost(metrics):
    """Seconds a job pays whatever its length: its wall time less the work (WORK)."""
    parts = metrics.get("time_seconds")
    return metrics["wall_seconds"] - sum(parts.get(p) or 0 for p in WORK) if parts else None


def checkpoints(run_dir):
    """A run folder's checkpoint-N folders, oldest step first."""
    return sorted(Path(run_dir).glob("checkpoint-*"),
                  key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1)


def read_json(path):
    """A JSON file's content, or None where it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
