"""The settings of a run that are not the lesson, each with why: the options the workshop adds
(RunOptions), the Trainer settings every stage shares (RUN_DEFAULTS), the fast path's
(FAST_PATH) and when compiling pays. The lesson's values (model, data, batch, accumulation,
epochs, learning rate, weight decay, length, precision, DeepSpeed config) are each stage's
config.py; the tools read them with workshop_defaults()."""
import importlib.util
from dataclasses import dataclass, field, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setting(default, why):
    """A dataclass field whose --help text says why it has this value."""
    return field(default=default, metadata={"help": why})


@dataclass
class RunOptions:
    """The workshop's own options beyond the lesson's settings."""
    random_weights: bool = setting(
        False, "build the architecture from its config alone: speed and memory runs on machines "
        "that cannot download the weights (the losses mean nothing)")
    fast_path: bool = setting(
        False, "the settings of FAST_PATH (workshop/settings.py) for those not given on the command "
        "line: the same 16 sequences per optimizer step and loss, less work (README: Making it fast)")
    compile_blocks: bool | None = setting(
        None, "with --fast_path: torch.compile + CUDA graphs for each BLOOM block (workshop/"
        "fast_path.py). Unset: on with the fast path on a CUDA GPU when the run is long enough to "
        "pay for compiling, and not under ZeRO-3 nor with gradient accumulation")
    answer_quality: bool = setting(
        True, "greedy answers to the validation questions before and after training, scored with "
        "SQuAD's exact match and F1 (workshop/answers.py): a few seconds on a GPU")
    save_model: bool = setting(
        True, "write the trained model at the end (off for speed and memory measurements: "
        "bloom-7b1 in fp32 is 28 GB)")
    save_minutes: float = setting(
        30, "write a checkpoint after this many minutes of training (and on the time limit's "
        "warning, see the .slurm job), not every epoch: a workshop run of a few minutes then "
        "writes none, and a preempted long run loses at most this much")
    profile_steps: int = setting(
        0, "profile this many optimizer steps from the run's middle (torch.profiler): where a "
        "step's time goes, by kind of kernel, and how long the GPU waits (profile.txt in "
        "--output_dir)")
    length_multiple: int | None = setting(
        None, "without --pad_to_max_length, batches are padded to a multiple of this. Unset: 8, "
        "which suits the GPU's matrix units; 64 with compiled blocks, which record a CUDA graph "
        "per length (at most 8 lengths up to 512)")


# The Trainer settings every stage shares (TrainingArguments' own defaults for the rest).
RUN_DEFAULTS = dict(
    output_dir="./bloom-qa-finetuned",
    eval_strategy="epoch",  # an eval loss per epoch: the tables' columns
    save_strategy="no",  # checkpoints by time instead (--save_minutes), and on request
    save_total_limit=2,  # a checkpoint of bloom-560m with its AdamW state is about 6.3 GB
    logging_steps=1,  # every optimizer step: exact per-epoch train loss, full loss curves
    seed=42,
    ddp_timeout=90,  # seconds a collective may wait: a lost node ends the job in ~2 minutes
    # (the multi-node job passes its COLLECTIVE_TIMEOUT)
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
)  # and SDPA attention and a loss without full-vocabulary logits (workshop/fast_path.py)
# Compiled blocks pay for their compiling from about this many optimizer steps on (measured on
# an H200: docs/results.md, Making it fast); shorter runs take the eager fast path.
COMPILE_PAYS_FROM_STEPS = 140
COMPILED_LENGTH_MULTIPLE = 64  # see length_multiple above
LENGTH_MULTIPLE = 8


def stage_settings(stage="baseline"):
    """The Settings dataclass of a stage's config.py (read from its file: the stages are not a
    package)."""
    path = ROOT / stage / "config.py"
    spec = importlib.util.spec_from_file_location(f"{stage.replace('-', '_')}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Settings


def workshop_defaults(stage="baseline"):
    """The workshop's settings by option name, as a run starts from them: the stage's config.py
    over RUN_DEFAULTS and RunOptions' defaults. The tools read them here: one definition each."""
    return {**{f.name: f.default for f in fields(RunOptions)}, **RUN_DEFAULTS,
            **{f.name: f.default for f in fields(stage_settings(stage))}}


def precision_of(settings):
    """What a run's settings (by option name) train in: fp16, bf16 or fp32."""
    return "bf16" if settings.get("bf16") else "fp16" if settings.get("fp16") else "fp32"


def compile_blocks_refusal(zero_stage, gradient_accumulation_steps):
    """Why --compile_blocks cannot run with this ZeRO stage and accumulation, or None."""
    if zero_stage == 3:  # not made to work: ZeRO-3's hooks gather each layer's partitioned
        # weights around its forward, inside what would be compiled
        return "--compile_blocks True is not supported with ZeRO-3 here: use --compile_blocks False"
    if gradient_accumulation_steps > 1:  # on an H100, the CUDA graphs' replay of a later
        # micro-batch overwrote what an earlier one's backward needed
        return ("--compile_blocks True needs --gradient_accumulation_steps 1: its CUDA graphs "
                "reuse their memory for every micro-batch")
    return None


def compiling_pays(zero_stage, batch, accumulation, samples, epochs, max_steps=-1, ranks=1):
    """Whether the fast path compiles its blocks by default: it can (above), and the run takes
    enough optimizer steps (per rank) to pay for compiling."""
    steps = max_steps if max_steps > 0 else int(epochs * -(-samples // (batch * accumulation * ranks)))
    return (compile_blocks_refusal(zero_stage, accumulation) is None
            and steps >= COMPILE_PAYS_FROM_STEPS)
