"""Fetch the model, its tokenizer and the dataset once, on a machine with internet (the login
node), into a folder the compute nodes can read; the jobs then train from it with the hub off.

    python tools/prepare.py                       # bigscience/bloom-560m and squad -> prepared/
    python tools/prepare.py --model_name_or_path bigscience/bloom-1b7 --prepared_dir /shared/me/prep-1b7
    python tools/prepare.py --model_name_or_path meta-llama/Llama-3.2-1B --prepared_dir prepared-llama

Any causal LM of the hub (a gated one, such as Llama's, after `hf auth login` with an account
that accepted its licence), or a named size of workshop/models.py (llama-3.2-1b: its hub id).

The folder holds model/ (config, weights and tokenizer files as on the hub) and data/
(train.jsonl and validation.jsonl: both whole splits, in the hub's row format). The .slurm
jobs use ../prepared when it exists (PREPARED=folder names another one) and run with
HF_HUB_OFFLINE=1, so that anything missing is an error at once rather than a hub timeout.
A local model or data folder is copied as it is.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from workshop.models import hub_id
from workshop.settings import workshop_defaults
from workshop.squad import SPLIT_FILES, is_local_path, load_split

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = workshop_defaults()  # the baseline's config.py
MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model"]  # not the other formats' copies


def prepare_model(name_or_path, out):
    """out/ with the model's config, weights and tokenizer files."""
    source = Path(name_or_path).expanduser()
    if source.is_dir():
        shutil.copytree(source, out, dirs_exist_ok=True)
    elif is_local_path(name_or_path):
        raise ValueError(f"model folder {name_or_path} does not exist")
    else:
        from huggingface_hub import is_offline_mode, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
        try:
            snapshot_download(name_or_path, local_dir=out, allow_patterns=MODEL_FILES)
        except LocalEntryNotFoundError:  # no network, or HF_HUB_OFFLINE=1: not a hub answer
            raise ValueError(
                f"{name_or_path} cannot be fetched: the hub is "
                f"{'off here (HF_HUB_OFFLINE=1)' if is_offline_mode() else 'not reachable from this machine'}. "
                f"Run this on a machine with internet (the login node) and copy the folder it makes "
                f"here, or give --model_name_or_path a model folder") from None
    from transformers import AutoConfig, AutoTokenizer
    AutoConfig.from_pretrained(out)  # both readable from the folder alone
    AutoTokenizer.from_pretrained(out)


def prepare_data(name_or_path, out):
    """out/train.jsonl and out/validation.jsonl: every row of both splits, checked."""
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLIT_FILES:
        rows = load_split(name_or_path, split)
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({k: row[k] for k in ("id", "title", "context", "question", "answers")
                                    if k in row}, ensure_ascii=False) + "\n")
        print(f"{split}: {len(rows)} rows")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=DEFAULTS["model_name_or_path"])
    parser.add_argument("--dataset_name_or_path", default=DEFAULTS["dataset_name_or_path"])
    parser.add_argument("--prepared_dir", type=Path, default=ROOT / "prepared",
                        help="where the jobs read from (default: prepared/ in the repository)")
    args = parser.parse_args()
    try:
        prepare_model(hub_id(args.model_name_or_path), args.prepared_dir / "model")
        prepare_data(args.dataset_name_or_path, args.prepared_dir / "data")
    except (ValueError, OSError) as e:
        sys.exit(f"error: {str(e).splitlines()[0]}")
    print(f"prepared {args.model_name_or_path} and {args.dataset_name_or_path} in {args.prepared_dir}")
    if args.prepared_dir.resolve() != (ROOT / "prepared").resolve():
        print(f"submit with PREPARED={args.prepared_dir.resolve()} sbatch ...")


if __name__ == "__main__":
    main()
