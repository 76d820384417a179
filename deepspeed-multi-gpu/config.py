"""Every setting of a run in one place, with the workshop's values as defaults.

Any of them can be changed on the command line, e.g.
    python train.py --num_train_epochs 1 --train_samples 100
(`python train.py --help` lists them all: these and every HF TrainingArguments option).
"""
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments


@dataclass
class WorkshopArguments:
    model_name_or_path: str = "bigscience/bloom-560m"  # hub id or a local folder
    random_weights: bool = False  # the architecture only (speed/memory runs without the weights)
    dataset_name_or_path: str = "squad"  # hub id, or a folder with train/validation JSON(L)
    train_samples: int = 500  # the first rows of each split: small enough for a workshop hour
    eval_samples: int = 50
    max_length: int = 512  # BLOOM's prompts here average ~220 tokens; longer ones are cut
    pad_to_max_length: bool = True  # every sequence padded to max_length, as the workshop does
    fast_path: bool = False  # the settings of FAST_PATH below, for those not given explicitly
    compile_blocks: bool = False  # with fast_path: torch.compile + CUDA graphs per BLOOM block
    # (fast_path.py); fast_path turns it on where there is a CUDA GPU, no ZeRO-3, no accumulation
    answer_quality: bool = True  # greedy answers to the validation questions, before and after
    # training: SQuAD exact match and F1 (answer_quality.py), a few seconds on a GPU


# The workshop's training settings (TrainingArguments' own defaults for the rest).
TRAINING_DEFAULTS = dict(
    output_dir="./bloom-qa-finetuned",
    eval_strategy="epoch",
    save_strategy="epoch",
    per_device_train_batch_size=4,
    per_device_eval_batch_size=4,
    gradient_accumulation_steps=4,  # 4 x 4 = 16 sequences per optimizer step on each GPU
    num_train_epochs=3,
    learning_rate=5e-5,
    weight_decay=0.01,
    fp16=True,  # turned off on machines without a CUDA GPU (see parse_args)
    push_to_hub=False,  # and no gradient checkpointing: TrainingArguments' default
    logging_steps=1,  # every optimizer step: exact per-epoch train loss, full loss curves
    report_to="none",
    seed=42,
    deepspeed=str(Path(__file__).with_name("ds_config.json")),  # ZeRO off; ds_zero*.json turn it on
)
# "Making it fast" (README): the same 16 sequences per optimizer step, the same loss, less work.
FAST_PATH = dict(
    pad_to_max_length=False,  # pad each batch to its longest prompt (~220 tokens), not to 512
    train_sampling_strategy="group_by_length",  # batches of similar lengths: little padding left
    per_device_train_batch_size=16,  # one large micro-batch keeps the GPU busy ...
    gradient_accumulation_steps=1,  # ... instead of four small ones
    per_device_eval_batch_size=16,
    optim="adamw_torch_fused",  # one kernel for the whole optimizer step (DeepSpeed has its own)
)  # and, in train.py, SDPA attention and a loss without full-vocabulary logits (fast_path.py)
KNOWN_ZERO_STAGES = (0, 1, 2, 3)


def check_deepspeed_config(path):
    """The ZeRO stage a DeepSpeed config asks for (None without a config); refuses a config
    that is missing, not JSON or names an unknown ZeRO stage."""
    if not path:
        return None
    if not Path(path).is_file():
        raise ValueError(f"DeepSpeed config {path} does not exist")
    try:
        config = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"DeepSpeed config {path} is not valid JSON ({e})") from None
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in KNOWN_ZERO_STAGES:
        raise ValueError(f"DeepSpeed config {path}: zero_optimization.stage is {stage!r}; "
                         f"ZeRO stages are {', '.join(map(str, KNOWN_ZERO_STAGES))}")
    return stage


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


def check_device(asked):
    """Adapt a run to a machine without a CUDA GPU; refuse fp16 on a GPU without fp16."""
    if not torch.cuda.is_available():
        if asked.fp16:
            print("notice: no CUDA GPU, so fp16 is off and this run trains in fp32", file=sys.stderr)
            asked.fp16 = False
        if asked.deepspeed:
            # Without a GPU, accelerate counts the ranks only in its CPU mode, and DeepSpeed's
            # CPU accelerator would ask for oneCCL: start its process group on gloo instead.
            import deepspeed  # here, so that the baseline runs without it
            asked.use_cpu = True
            deepspeed.init_distributed(dist_backend="gloo")
    elif asked.fp16 and torch.cuda.get_device_capability() < (6, 0):
        raise ValueError(f"fp16 needs a GPU of compute capability 6.0 or newer; "
                         f"{torch.cuda.get_device_name()} has "
                         f"{'.'.join(map(str, torch.cuda.get_device_capability()))}")


def parse_args(argv=None):
    """(WorkshopArguments, TrainingArguments) from the defaults above and the command line."""
    parser = HfArgumentParser((WorkshopArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    asked = parser.parse_args(argv)
    given = {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")}
    stage = check_deepspeed_config(asked.deepspeed)
    if asked.fast_path:
        for key, value in FAST_PATH.items():
            if f"--{key}" not in given:
                setattr(asked, key, value)
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported() and "--fp16" not in given:
            asked.bf16 = True  # bf16: fp16's speed without loss scaling, where the GPU has it
    refusal = compile_blocks_refusal(stage, asked.gradient_accumulation_steps)
    if asked.fast_path and torch.cuda.is_available() and "--compile_blocks" not in given:
        asked.compile_blocks = refusal is None  # CUDA graphs need a CUDA GPU
    if asked.compile_blocks and not asked.fast_path:
        raise ValueError("--compile_blocks True compiles the fast path: add --fast_path True")
    if asked.compile_blocks and refusal:
        raise ValueError(refusal)
    if asked.bf16 and "--fp16" not in given:
        asked.fp16 = False  # asking for bf16 replaces the default fp16
    check_device(asked)
    workshop_args, training_args = (
        cls(**{f.name: getattr(asked, f.name) for f in fields(cls) if f.init})
        for cls in (WorkshopArguments, TrainingArguments))
    ds_config = getattr(training_args, "hf_deepspeed_config", None)  # HF fills in "auto" here
    if ds_config and ds_config.mismatches:
        raise ValueError(f"DeepSpeed config {asked.deepspeed} contradicts the Trainer: "
                         + "; ".join(m.lstrip("- ") for m in ds_config.mismatches)
                         + ' (set those keys to "auto" or to the same values)')
    return workshop_args, training_args
