"""Every option and file a run reads, checked before anything heavy runs: a mistake is one line
naming the option or file and what to do (raised as ValueError; train.py prints it last)."""
import json
import math
import os
from pathlib import Path

from workshop.fast_path import fast_path_refusal
from workshop.settings import compile_blocks_refusal
from workshop.squad import is_local_path, not_here

POSITIVE = ("train_samples", "eval_samples", "max_length", "per_device_train_batch_size",
            "per_device_eval_batch_size", "gradient_accumulation_steps", "learning_rate",
            "logging_steps", "save_minutes", "ddp_timeout")
NOT_NEGATIVE = ("weight_decay", "warmup_steps")


def check_sources(asked):
    """The model and dataset options: a folder that holds what it should, or a hub id that
    this machine can get."""
    model, data = Path(asked.model_name_or_path).expanduser(), Path(asked.dataset_name_or_path).expanduser()
    if model.is_file():
        raise ValueError(f"--model_name_or_path {model} is a file: give the model's folder")
    if model.is_dir():
        if not (model / "config.json").is_file():
            raise ValueError(f"model folder {model} has no config.json: is it a saved model "
                             f"(save_pretrained, tools/prepare.py)?")
        try:
            model_type = json.loads((model / "config.json").read_text()).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ValueError(f"{model / 'config.json'} is not a JSON object ({e}): copy the "
                             f"model folder again") from None
        if asked.fast_path and (refusal := fast_path_refusal(model_type)):
            raise ValueError(f"{model} is a {model_type} model: {refusal}")
        if not any((model / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            raise ValueError(f"model folder {model} has no tokenizer (tokenizer.json): make a "
                             f"complete folder with `python tools/prepare.py --model_name_or_path "
                             f"NAME --prepared_dir FOLDER`, or save the tokenizer beside the model")
    elif is_local_path(asked.model_name_or_path):
        raise ValueError(f"model folder {asked.model_name_or_path} does not exist "
                         f"(looked for {model.resolve()})")
    else:
        from huggingface_hub import constants, try_to_load_from_cache
        if constants.HF_HUB_OFFLINE and not isinstance(
                try_to_load_from_cache(asked.model_name_or_path, "config.json"), str):
            raise ValueError(not_here(asked.model_name_or_path, "model"))
    if data.is_file():
        raise ValueError(f"--dataset_name_or_path {data} is a file: give the folder that holds "
                         f"the train and validation files ({data.parent})")
    if not data.exists() and (is_local_path(asked.dataset_name_or_path)
                              or data.suffix in (".json", ".jsonl")):
        raise ValueError(f"dataset folder {asked.dataset_name_or_path} does not exist "
                         f"(looked for {data.resolve()})")


def check_output_dir(asked):
    """The output folder: a folder, never a folder the run reads from, nor a stage's."""
    out = Path(asked.output_dir).expanduser()
    if out.is_symlink() and not out.exists():
        raise ValueError(f"--output_dir {asked.output_dir} is a link to {os.readlink(out)}, which does "
                         f"not exist: create that folder (mkdir -p), or give another --output_dir")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {asked.output_dir} is a file: give a folder")
    made = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())  # or will be
    if not made.is_dir():
        raise ValueError(f"--output_dir {asked.output_dir} cannot be made: {made} is a file")
    if not os.access(made, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir {asked.output_dir}: {made} is not writable by this user: "
                         f"give a folder of your own (project or scratch storage)")
    if (out / "train.py").is_file():
        raise ValueError(f"--output_dir {asked.output_dir} is a stage folder (it holds train.py): "
                         f"give a folder of its own, e.g. runs/my-run")
    for option in ("model_name_or_path", "dataset_name_or_path"):
        source = Path(getattr(asked, option)).expanduser()
        if source.is_dir() and (out.resolve() == source.resolve() or source.resolve() in out.resolve().parents):
            raise ValueError(f"--output_dir {asked.output_dir} is inside --{option} "
                             f"{getattr(asked, option)}: the run would write over what it reads; "
                             f"choose another --output_dir")


def check_values(asked, deepspeed):
    """Every number a user types and the combinations that cannot run: one line each."""
    for name in POSITIVE:
        value = getattr(asked, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value)) or value <= 0:
            raise ValueError(f"--{name} {value}: must be a number above 0")
    if asked.max_steps <= 0 and not asked.num_train_epochs > 0:
        raise ValueError(f"--num_train_epochs {asked.num_train_epochs}: must be above 0 "
                         f"(or give --max_steps)")
    for name in NOT_NEGATIVE:
        value = getattr(asked, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--{name} {value}: must be a number, 0 or more")
    if asked.save_total_limit is not None and asked.save_total_limit < 1:
        raise ValueError(f"--save_total_limit {asked.save_total_limit}: keep at least 1 "
                         f"checkpoint, or leave it unset to keep them all")
    if asked.resume_from_checkpoint not in (None, "True", "true") and not (
            Path(asked.resume_from_checkpoint) / "trainer_state.json").is_file():
        raise ValueError(f"--resume_from_checkpoint {asked.resume_from_checkpoint}: no checkpoint "
                         f"there (no trainer_state.json); give a run's checkpoint-N folder, or True "
                         f"for the newest in --output_dir")
    if asked.profile_steps < 0:
        raise ValueError(f"--profile_steps {asked.profile_steps}: give 0 (no profile) or more")
    if asked.length_multiple is not None and asked.length_multiple < 1:
        raise ValueError(f"--length_multiple {asked.length_multiple}: must be above 0")
    check_sources(asked)
    check_output_dir(asked)
    if asked.compile_blocks and not asked.fast_path:
        raise ValueError("--compile_blocks True compiles the fast path: add --fast_path True")
    if asked.fp16 and asked.bf16:
        raise ValueError("--fp16 True and --bf16 True: choose one")
    if asked.use_cpu and (asked.fp16 or asked.bf16):
        raise ValueError("--use_cpu True trains in fp32: drop --fp16 True / --bf16 True")
    if asked.compile_blocks and (refusal := compile_blocks_refusal(
            deepspeed.stage, asked.gradient_accumulation_steps)):
        raise ValueError(refusal)
    if deepspeed.offload("param") and deepspeed.stage != 3:  # DeepSpeed would ignore it
        raise ValueError(f"DeepSpeed config {deepspeed.path}: offload_param is ZeRO-3's; at stage "
                         f"{deepspeed.stage} DeepSpeed ignores it: set stage 3 (as ds_zero3_offload.json "
                         f"does) or remove offload_param")
    if deepspeed.offload("optimizer") and deepspeed.stage == 0:
        raise ValueError(f"DeepSpeed config {deepspeed.path}: offload_optimizer needs ZeRO (stage 1, 2 "
                         f"or 3); at stage 0 DeepSpeed ignores it: set a stage (as "
                         f"ds_zero2_offload.json does) or remove offload_optimizer")
    for what in ("param", "optimizer"):  # DeepSpeed would find out once the model is loaded
        if deepspeed.offload(what) == "nvme" and not deepspeed.offload_section(what).get("nvme_path"):
            raise ValueError(f"DeepSpeed config {deepspeed.path}: offload_{what} to nvme needs its "
                             f"nvme_path (a folder on the node's local NVMe disk): set it, or offload "
                             f"to \"cpu\" as ds_zero3_offload.json does")
    if deepspeed.path:
        check_deepspeed_keys(deepspeed)
    if deepspeed.path and "LOCAL_RANK" not in os.environ:
        raise ValueError(f"--deepspeed {asked.deepspeed} needs DeepSpeed's launcher, which starts "
                         f"one process per GPU: deepspeed --num_gpus 1 train.py [options] (or "
                         f"this stage's .slurm job)")
    if deepspeed.path and asked.use_cpu and asked.fp16:
        raise ValueError("fp16 on the CPU: DeepSpeed's CPU accelerator has no fp16; drop --fp16 True")


def check_deepspeed_keys(deepspeed):
    """DeepSpeed's own config class run on the file as each rank starts, before the ranks meet
    and before the model is built (the Trainer's "auto" values as placeholders: off for the
    precisions, 1 for the numbers): a key it does not take, a value out of its range, a key it
    removed."""
    from deepspeed.runtime.config import DeepSpeedConfig
    resolved = json.loads(json.dumps(deepspeed.raw).replace('"enabled": "auto"', '"enabled": false')
                          .replace('"auto"', "1"))
    # The batch sizes depend on the number of ranks, unknown to this process yet: checked
    # against the Trainer's once the ranks meet (check_deepspeed_config), and by DeepSpeed then.
    for key in ("train_batch_size", "gradient_accumulation_steps"):
        resolved.pop(key, None)
    resolved["train_micro_batch_size_per_gpu"] = 1
    try:
        DeepSpeedConfig(resolved)
    except Exception as e:  # its checks raise AssertionError, ValueError, its own DeepSpeedConfigError...
        raise ValueError(deepspeed_refusal(deepspeed.path, " ".join(str(e).split())[:300] or type(e).__name__)) from None


def check_deepspeed_config(training_args):
    """The DeepSpeed config as HF filled it in from the Trainer's settings: refused where it
    contradicts them."""
    config = getattr(training_args, "hf_deepspeed_config", None)
    if config is not None and config.mismatches:
        raise ValueError(f"DeepSpeed config {training_args.deepspeed} contradicts the Trainer: "
                         + "; ".join(m.lstrip("- ") for m in config.mismatches)
                         + ' (set those keys to "auto" or to the same values)')


def deepspeed_refusal(path, reason):
    """DeepSpeed's refusal of the config at `path`, as the run's one line: here for what its
    config class checks, and (workshop/exit_status.py) for what it asserts once the model is built."""
    return f"DeepSpeed config {path}: DeepSpeed refuses it ({reason}); compare it with the stage's ds_zero*.json"
