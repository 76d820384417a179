"""Every setting of a run in one place: the workshop's values, each with why as its --help text.

Any of them can be changed on the command line, e.g.
    python train.py --num_train_epochs 1 --train_samples 100
(`python train.py --help` lists them all: these and every HF TrainingArguments option).
Defaults come in layers, all through the parser, so any spelling argparse accepts (an
abbreviation, `--opt=value`) means the same thing: the workshop's, then the fast path's
(`--fast_path True`), then what this machine's GPU can do, then the command line.
"""
import difflib
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed.distributed_c10d as c10d
from transformers import HfArgumentParser, TrainingArguments


def option(default, why):
    return field(default=default, metadata={"help": why})


@dataclass
class WorkshopArguments:
    model_name_or_path: str = option(
        "bigscience/bloom-560m", "hub id, or a local folder with config.json (prepared/model on "
        "offline nodes: tools/prepare.py)")
    random_weights: bool = option(
        False, "build the architecture from its config alone: speed and memory runs on machines "
        "that cannot download the weights (the losses mean nothing)")
    dataset_name_or_path: str = option(
        "squad", "hub id, or a local folder holding a train and a validation file (JSON lines, "
        "a JSON list of rows, or SQuAD's own train-v1.1.json / dev-v1.1.json)")
    train_samples: int = option(500, "the first rows of the train split: small enough for a workshop hour")
    eval_samples: int = option(50, "the first rows of the validation split, for eval loss and answers")
    max_length: int = option(
        512, "tokens per example; SQuAD prompts average ~220 tokens with BLOOM's tokenizer, and "
        "longer ones lose the end of their context (question and answer are kept whole)")
    pad_to_max_length: bool = option(
        True, "pad every sequence to max_length, as the workshop does (the fast path pads each "
        "batch to its longest sequence instead)")
    fast_path: bool = option(
        False, "the settings of FAST_PATH in config.py for those not given on the command line: "
        "the same 16 sequences per optimizer step and loss, less work (README: Making it fast)")
    compile_blocks: bool | None = option(
        None, "with --fast_path: torch.compile + CUDA graphs for each BLOOM block (fast_path.py). "
        "Unset: on with the fast path on a CUDA GPU when the run is long enough to pay for "
        "compiling, and not under ZeRO-3 nor with gradient accumulation")
    answer_quality: bool = option(
        True, "greedy answers to the validation questions before and after training, scored with "
        "SQuAD's exact match and F1 (answer_quality.py): a few seconds on a GPU")
    save_model: bool = option(
        True, "write the trained model at the end (off for speed and memory measurements: "
        "bloom-7b1 in fp32 is 28 GB)")
    save_minutes: float = option(
        30, "write a checkpoint after this many minutes of training (and on the time limit's "
        "warning, see the .slurm job), not every epoch: a workshop run of a few minutes then "
        "writes none, and a preempted long run loses at most this much")


# The workshop's training settings (TrainingArguments' own defaults for the rest).
TRAINING_DEFAULTS = dict(
    output_dir="./bloom-qa-finetuned",
    eval_strategy="epoch",
    save_strategy="no",  # checkpoints by time instead (save_minutes above), and on request
    save_total_limit=2,  # a checkpoint of bloom-560m with its AdamW state is about 6.3 GB
    per_device_train_batch_size=4,
    per_device_eval_batch_size=4,
    gradient_accumulation_steps=4,  # 4 x 4 = 16 sequences per optimizer step on each GPU
    num_train_epochs=3,
    learning_rate=5e-5,
    weight_decay=0.01,
    fp16=True,  # mixed precision on the GPU; the CPU trains in fp32 (see device_defaults)
    push_to_hub=False,
    logging_steps=1,  # every optimizer step: exact per-epoch train loss, full loss curves
    report_to="none",
    seed=42,
    ddp_timeout=90,  # seconds a collective may wait: a lost node ends the job in ~2 minutes
    # (the multi-node job passes its COLLECTIVE_TIMEOUT)
    deepspeed=str(Path(__file__).with_name("ds_config.json")),  # ZeRO off; ds_zero*.json turn it on
)
# "Making it fast" (README): the same 16 sequences per optimizer step, the same loss, less work.
FAST_PATH = dict(
    pad_to_max_length=False,  # pad each batch to its longest prompt (~220 tokens), not to 512
    train_sampling_strategy="group_by_length",  # batches of similar lengths: little padding left
    per_device_train_batch_size=16,  # one large micro-batch keeps the GPU busy ...
    gradient_accumulation_steps=1,  # ... instead of four small ones
    per_device_eval_batch_size=16,
    optim="adamw_torch_fused",  # one kernel for the whole optimizer step
    bf16=True, fp16=False,  # fp16's speed without loss scaling, where the GPU has bf16
)  # and, in train.py, SDPA attention and a loss without full-vocabulary logits (fast_path.py)
# Compiled blocks pay for their compiling from about this many optimizer steps on: on an H200,
# over the workshop's 3 epochs, compiling took 16.7 s with a warm cache (42 s cold) and saved
# 0.12 s a step (295 against 102 samples/s, 16 a step; docs/results.md). Shorter runs, the
# workshop's 96 steps among them, take the eager fast path.
COMPILE_PAYS_FROM_STEPS = 140
# Compiled blocks record a CUDA graph per input shape: lengths are padded to a multiple of this
# (at most 8 lengths up to 512); otherwise to a multiple of 8, which suits the matrix units.
COMPILED_LENGTH_MULTIPLE = 64
KNOWN_ZERO_STAGES = (0, 1, 2, 3)


class Parser(HfArgumentParser):
    """HF's parser with one-line errors: a misspelled option gets the closest real one, not
    the 100-line usage."""

    def error(self, message):
        unknown = message.split("unrecognized arguments: ")[-1].split() if "unrecognized" in message else []
        options = [o for action in self._actions for o in action.option_strings]
        hints = [f"{u}: did you mean {close[0]}?" for u in unknown if u.startswith("--")
                 and (close := difflib.get_close_matches(u.split("=")[0], options, n=1))]
        sys.exit(f"error: {'; '.join(hints) or message} (python train.py --help lists every option)")


def deepspeed_config(path):
    """The DeepSpeed config as a dict ({} without one); refuses a config that is missing, not
    JSON or names an unknown ZeRO stage. The one place that reads the JSON."""
    if not path:
        return {}
    if not Path(path).is_file():
        raise ValueError(f"--deepspeed {path}: no such file (the stage folder has ds_zero1.json, "
                         f"ds_zero2.json, ds_zero3.json, ...)")
    try:
        config = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"DeepSpeed config {path} is not valid JSON ({e})") from None
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in KNOWN_ZERO_STAGES:
        raise ValueError(f"DeepSpeed config {path}: zero_optimization.stage is {stage!r}; "
                         f"ZeRO stages are {', '.join(map(str, KNOWN_ZERO_STAGES))}")
    return config


def zero_stage(config):
    """ZeRO stage of a DeepSpeed config dict, None without DeepSpeed."""
    return config.get("zero_optimization", {}).get("stage", 0) if config else None


def compile_blocks_refusal(stage, gradient_accumulation_steps):
    """Why --compile_blocks cannot run with this ZeRO stage and accumulation, or None."""
    if stage == 3:  # not made to work: ZeRO-3's hooks gather each layer's partitioned
        # weights around its forward, inside what would be compiled
        return "--compile_blocks True is not supported with ZeRO-3 here: use --compile_blocks False"
    if gradient_accumulation_steps > 1:  # on an H100, the CUDA graphs' replay of a later
        # micro-batch overwrote what an earlier one's backward needed
        return ("--compile_blocks True needs --gradient_accumulation_steps 1: its CUDA graphs "
                "reuse their memory for every micro-batch")
    return None


def planned_steps(asked):
    """Optimizer steps the run will take (per rank), for deciding whether compiling pays."""
    if asked.max_steps > 0:
        return asked.max_steps
    ranks = int(os.environ.get("WORLD_SIZE", 1))
    per_step = asked.per_device_train_batch_size * asked.gradient_accumulation_steps * ranks
    return int(asked.num_train_epochs * -(-asked.train_samples // per_step))


def device_defaults(asked):
    """What this machine's device changes in the defaults (reads the device, sets nothing up).

    A GPU job that sees no GPU is a broken install or a wrong partition, so it stops, unless
    the CPU was asked for (the CPU demo and the tests); the CPU trains in fp32, on gloo."""
    if asked.use_cpu:
        print("notice: --use_cpu: fp16/bf16 are off, this run trains in fp32 on the CPU",
              file=sys.stderr)
        # DeepSpeed's CPU accelerator, and ranks on gloo (DeepSpeed's default would ask for oneCCL)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        launched = "LOCAL_RANK" in os.environ
        return dict(fp16=False, bf16=False, compile_blocks=False, **(dict(ddp_backend="gloo") if launched else {}))
    if not torch.cuda.is_available():
        raise ValueError(
            "no CUDA GPU is visible (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}, CUDA {torch.version.cuda}): check that the job asked for a GPU "
            "(--gres=gpu:1 or --gpus=1, a GPU partition), that `nvidia-smi` works on the node and "
            "that the environment has a CUDA build of torch; to train on the CPU on purpose "
            "add --use_cpu True")
    defaults = {}
    if asked.bf16 and not torch.cuda.is_bf16_supported():
        print(f"notice: {torch.cuda.get_device_name()} has no bf16: fp16 instead", file=sys.stderr)
        defaults.update(bf16=False, fp16=True)
    if asked.fast_path and asked.compile_blocks is None:
        defaults["compile_blocks"] = (
            compile_blocks_refusal(zero_stage(deepspeed_config(asked.deepspeed)),
                                   asked.gradient_accumulation_steps) is None
            and planned_steps(asked) >= COMPILE_PAYS_FROM_STEPS)
    return defaults


def not_here(name, what):
    """Why a hub id cannot be used with the hub off (compute nodes), and what to do."""
    return (f"{name} is not a folder here ({Path(name).resolve()} does not exist) and not on "
            f"this machine's hub cache, and the hub is off (HF_HUB_OFFLINE=1, as the jobs set "
            f"it): give the folder's path, or run `python tools/prepare.py --{what}_name_or_path "
            f"{name}` once on a machine with internet (the login node), then submit again")


def check_sources(asked):
    """The model and dataset options: a folder that holds what it should, or a hub id that
    this machine can get. The one place that tells a local path from a hub id."""
    model, data = Path(asked.model_name_or_path).expanduser(), Path(asked.dataset_name_or_path).expanduser()
    looks_like_path = lambda name: name.startswith((".", "/", "~")) or name.count("/") > 1
    if model.is_file():
        raise ValueError(f"--model_name_or_path {model} is a file: give the model's folder")
    if model.is_dir() and not (model / "config.json").is_file():
        raise ValueError(f"model folder {model} has no config.json: is it a saved model "
                         f"(save_pretrained, tools/prepare.py)?")
    if not model.exists():
        if looks_like_path(asked.model_name_or_path):
            raise ValueError(f"model folder {asked.model_name_or_path} does not exist "
                             f"(looked for {model.resolve()})")
        from huggingface_hub import constants, try_to_load_from_cache
        if constants.HF_HUB_OFFLINE and not isinstance(
                try_to_load_from_cache(asked.model_name_or_path, "config.json"), str):
            raise ValueError(not_here(asked.model_name_or_path, "model"))
    if data.is_file():
        raise ValueError(f"--dataset_name_or_path {data} is a file: give the folder that holds "
                         f"the train and validation files ({data.parent})")
    if not data.exists() and (looks_like_path(asked.dataset_name_or_path)
                              or data.suffix in (".json", ".jsonl")):
        raise ValueError(f"dataset folder {asked.dataset_name_or_path} does not exist "
                         f"(looked for {data.resolve()})")


def check_values(asked):
    """Every number a user types, before anything heavy runs: one line naming the option."""
    positive = ["train_samples", "eval_samples", "max_length", "per_device_train_batch_size",
                "per_device_eval_batch_size", "gradient_accumulation_steps", "learning_rate",
                "logging_steps", "save_minutes", "ddp_timeout"]
    for name in positive:
        if getattr(asked, name) <= 0:
            raise ValueError(f"--{name} {getattr(asked, name)}: must be above 0")
    if asked.max_steps <= 0 and asked.num_train_epochs <= 0:
        raise ValueError(f"--num_train_epochs {asked.num_train_epochs}: must be above 0 "
                         f"(or give --max_steps)")
    for name in ("weight_decay", "warmup_steps"):
        if getattr(asked, name) < 0:
            raise ValueError(f"--{name} {getattr(asked, name)}: must be 0 or more")
    if asked.save_total_limit is not None and asked.save_total_limit < 1:
        raise ValueError(f"--save_total_limit {asked.save_total_limit}: keep at least 1 "
                         f"checkpoint, or leave it unset to keep them all")
    check_sources(asked)
    if Path(asked.output_dir).exists() and not Path(asked.output_dir).is_dir():
        raise ValueError(f"--output_dir {asked.output_dir} is a file: give a folder")
    if asked.compile_blocks and not asked.fast_path:
        raise ValueError("--compile_blocks True compiles the fast path: add --fast_path True")
    if asked.fp16 and asked.bf16:
        raise ValueError("--fp16 True and --bf16 True: choose one")
    config = deepspeed_config(asked.deepspeed)
    if asked.compile_blocks and (refusal := compile_blocks_refusal(
            zero_stage(config), asked.gradient_accumulation_steps)):
        raise ValueError(refusal)
    if config and "LOCAL_RANK" not in os.environ:
        raise ValueError(f"--deepspeed {asked.deepspeed} needs DeepSpeed's launcher, which starts "
                         f"one process per GPU: deepspeed --num_gpus 1 train.py [options] (or "
                         f"this stage's .slurm job)")
    if torch.cuda.is_available() and not asked.use_cpu and asked.fp16 \
            and torch.cuda.get_device_capability() < (6, 0):
        raise ValueError(f"fp16 needs a GPU of compute capability 6.0 or newer; "
                         f"{torch.cuda.get_device_name()} has "
                         f"{'.'.join(map(str, torch.cuda.get_device_capability()))}: use --fp16 False")


def parse_args(argv=None):
    """(WorkshopArguments, TrainingArguments): the layered defaults, then the command line."""
    parser = Parser((WorkshopArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    if parser.parse_known_args(argv)[0].fast_path:
        parser.set_defaults(**FAST_PATH)
    if parser.parse_known_args(argv)[0].bf16:
        parser.set_defaults(fp16=False)  # asking for bf16 replaces the workshop's fp16
    given = parser.parse_known_args(argv)[0]
    parser.set_defaults(**device_defaults(given))
    asked = parser.parse_args(argv)
    if asked.use_cpu and (asked.fp16 or asked.bf16):
        raise ValueError("--use_cpu True trains in fp32: drop --fp16 True / --bf16 True")
    check_values(asked)
    # --ddp_timeout for every collective: HF gives it to the default process group only, and
    # DeepSpeed's ZeRO-0/1/2 make their groups without one (torch's default then: 30 minutes
    # for gloo, 10 for NCCL), so a lost node would hang the job that long.
    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timedelta(seconds=asked.ddp_timeout)
    if asked.use_cpu and asked.deepspeed and "LOCAL_RANK" in os.environ:
        # HF builds TrainingArguments with DeepSpeed's process group, on NCCL; on the CPU it
        # must be gloo, which DeepSpeed only takes when it is started first.
        import deepspeed
        deepspeed.init_distributed(dist_backend="gloo", timeout=timedelta(seconds=asked.ddp_timeout))
    # HF builds the dataclasses; with a DeepSpeed config TrainingArguments also starts the
    # process group (through accelerate), so every rank must get here.
    workshop_args, training_args = parser.parse_args_into_dataclasses(argv)
    ds_config = getattr(training_args, "hf_deepspeed_config", None)  # HF fills in "auto" here
    if ds_config and ds_config.mismatches:
        raise ValueError(f"DeepSpeed config {training_args.deepspeed} contradicts the Trainer: "
                         + "; ".join(m.lstrip("- ") for m in ds_config.mismatches)
                         + ' (set those keys to "auto" or to the same values)')
    return workshop_args, training_args
