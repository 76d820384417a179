"""Compute nodes without internet: tools/prepare.py fills a folder once, the jobs train from it
with the hub off, and a missing model or dataset is one line naming the prepare command."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tiny_args

# what the tiny runs need besides the model and the data
SMALL = tiny_args(Path("unused"), num_train_epochs=1)[4:]


def prepare(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "prepare.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def job(tmp_path):
    """job(PREPARED, *train.py args): the baseline's .slurm job run with bash, as on a compute
    node without internet (an empty Hugging Face cache; the job itself turns the hub off).
    Its log files in baseline/log/ are removed afterwards."""
    names = []

    def run(prepared, *args):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SLURM_"))}
        env.update(PREPARED=str(prepared), HF_HOME=str(tmp_path / "empty-hf-cache"),
                   OUTPUT_DIR=str(tmp_path / "out"))
        proc = subprocess.run(["bash", str(ROOT / "baseline" / "baseline.slurm"), *map(str, args)],
                              env=env, capture_output=True, text=True, timeout=300)
        names.extend(re.findall(r"^run (\S+) on ", proc.stdout, re.M))
        return proc
    yield run
    for name in names:
        for path in (ROOT / "baseline" / "log").glob(f"{name}*"):
            path.unlink()


def test_prepare_then_train_with_the_hub_off(tiny, tmp_path, job):
    prepared = tmp_path / "prepared"
    proc = prepare("--model_name_or_path", tiny / "model", "--dataset_name_or_path", tiny / "data",
                   "--prepared_dir", prepared)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train: 64 rows" in proc.stdout and "validation: 16 rows" in proc.stdout
    assert f"submit with PREPARED={prepared} sbatch" in proc.stdout
    assert {p.name for p in (prepared / "data").iterdir()} == {"train.jsonl", "validation.jsonl"}
    assert (prepared / "model" / "model.safetensors").is_file()

    proc = job(prepared, *SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:]
    metrics = json.loads((tmp_path / "out" / "run_metrics.json").read_text())
    assert metrics["status"] == "complete" and len(metrics["epochs"]) == 1
    assert metrics["model"] == f"{prepared}/model" and metrics["dataset"] == f"{prepared}/data"


@pytest.mark.parametrize("missing, args", [
    ("model", []),  # the defaults: bigscience/bloom-560m and squad
    ("dataset", ["--model_name_or_path", "TINY"]),
])
def test_missing_from_this_machine_names_the_prepare_command(tiny, tmp_path, job, missing, args):
    if (ROOT / "prepared").exists():
        pytest.skip("this checkout has a prepared/ folder, which the jobs use by default")
    args = [str(tiny / "model") if a == "TINY" else a for a in args]
    proc = job("../prepared", *SMALL, *args)  # the jobs' default, absent here
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output, output[-3000:]
    name = {"model": "bigscience/bloom-560m", "dataset": "squad"}[missing]
    errors = {line for line in output.splitlines() if line.startswith("error: ")}
    assert errors == {f"error: {name} is not a folder here ({ROOT / 'baseline' / name} does not "
                      f"exist) and not on this machine's hub cache, and the hub is off "
                      f"(HF_HUB_OFFLINE=1, as the jobs set it): give the folder's path, or run "
                      f"`python tools/prepare.py --{missing}_name_or_path {name}` once on a machine "
                      f"with internet (the login node), then submit again"}, output[-3000:]
    assert output.strip().splitlines()[-1] == errors.pop()  # the reason is the log's last line


def test_prepare_refuses_a_missing_folder_in_one_line(tmp_path):
    proc = prepare("--model_name_or_path", "./no-such-model", "--prepared_dir", tmp_path / "p")
    assert proc.returncode == 1 and proc.stderr.strip() == "error: model folder ./no-such-model does not exist"
