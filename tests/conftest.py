"""Shared fixtures: a tiny BLOOM, its tokenizer and SQuAD-format data, built once per session."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["baseline", "deepspeed-single-gpu", "deepspeed-multi-gpu", "deepspeed-multi-node"]
DEEPSPEED_STAGES = STAGES[1:]
# DeepSpeed's launcher: beside this Python (a venv), else on the PATH (packages installed elsewhere)
DEEPSPEED = (str(Path(sys.executable).with_name("deepspeed"))
             if Path(sys.executable).with_name("deepspeed").is_file() else shutil.which("deepspeed"))

# Offline, quiet, deterministic: the tests never reach the hub.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                  PYTHONUNBUFFERED="1")


@pytest.fixture(scope="session", autouse=True)
def remove_deepspeed_shared_memory():
    """DeepSpeed on CPU leaves a 66 MB all-reduce buffer in /dev/shm for every rank of every run
    (deepspeed_allreduce_buffer_*); a day of test runs filled a 24 GB machine's memory. The
    session removes the ones it made."""
    shm = Path("/dev/shm")
    before = set(shm.glob("deepspeed_allreduce_buffer_*"))
    yield
    for buffer in set(shm.glob("deepspeed_allreduce_buffer_*")) - before:
        buffer.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Folder with model/ (tiny BLOOM + tokenizer) and data/ (train/validation JSONL)."""
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny.py"), str(out)],
                   check=True, capture_output=True)
    return out


def tiny_args(tiny, **overrides):
    """train.py arguments for a quick run on the tiny model, on the CPU (asked for explicitly:
    a GPU job that sees no GPU is refused; on a GPU machine these runs stay on the CPU too)."""
    args = dict(model_name_or_path=tiny / "model", dataset_name_or_path=tiny / "data",
                train_samples=32, eval_samples=8, max_length=64, num_train_epochs=2,
                learning_rate=2e-3, seed=0,  # a high rate: the tiny model learns in 4 steps
                use_cpu=True)
    args.update(overrides)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]
