"""The run's settings: every value you change for a run, each with why (its --help text).
Change one here, or for one run on the command line:

    python train.py --learning_rate 1e-4 --num_train_epochs 1

`python train.py --help` lists these, the workshop's own options (the fast path, checkpoints
by time: workshop/settings.py) and every option of HF's TrainingArguments. On the CPU the run
trains in fp32; the fast path (--fast_path True) changes the batch, the padding and the
precision where the command line does not (README: Making it fast).
"""
from dataclasses import dataclass

from workshop.settings import setting

DEEPSPEED_CONFIG = "ds_config.json"  # the DeepSpeed stages name their ZeRO config (--deepspeed ds_zero2.json)


@dataclass
class Settings:
    # What is trained, on what
    model_name_or_path: str = setting(
        "bigscience/bloom-560m", "hub id, or a local folder with config.json (prepared/model on "
        "offline nodes: tools/prepare.py)")
    dataset_name_or_path: str = setting(
        "squad", "hub id, or a local folder holding a train and a validation file (JSON lines, "
        "a JSON list of rows, or SQuAD's own train-v1.1.json / dev-v1.1.json)")
    train_samples: int = setting(500, "the first rows of the train split: small enough for a workshop hour")
    eval_samples: int = setting(50, "the first rows of the validation split, for eval loss and answers")
    max_length: int = setting(
        512, "tokens per example; SQuAD prompts average ~220 tokens with BLOOM's tokenizer, and "
        "longer ones lose the end of their context (question and answer are kept whole)")
    pad_to_max_length: bool = setting(
        True, "pad every sequence to max_length, as the workshop does (the fast path pads each "
        "batch to its longest sequence instead)")
    # How it trains (HF TrainingArguments' names)
    per_device_train_batch_size: int = setting(
        4, "sequences per GPU in each forward and backward pass: what fits beside a 560M model")
    gradient_accumulation_steps: int = setting(
        4, "micro-batches whose gradients add up to one optimizer step: 4 x 4 = 16 sequences per "
        "step on each GPU, a batch larger than fits at once")
    per_device_eval_batch_size: int = setting(4, "sequences per GPU in each evaluation pass")
    num_train_epochs: float = setting(
        3, "passes over the train rows: enough to see 500 examples overfit (the eval loss rises)")
    learning_rate: float = setting(
        5e-5, "AdamW's step size at its peak (it decays linearly to 0): small, as fine-tuning a "
        "trained model wants")
    weight_decay: float = setting(0.01, "AdamW's decoupled weight decay: a little regularisation")
    fp16: bool = setting(
        True, "mixed precision on the GPU: 16-bit matmuls with fp32 master weights, about half the "
        "activation memory (--bf16 True instead where the GPU has it)")
    deepspeed: str | None = setting(
        DEEPSPEED_CONFIG, "DeepSpeed's JSON config, which chooses the ZeRO stage and offload (the "
        "stage folder's ds_zero*.json); none: the Trainer alone")
