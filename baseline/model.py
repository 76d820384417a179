"""Load BLOOM and its tokenizer; save them so that `from_pretrained` reloads them."""
from pathlib import Path

import torch
from huggingface_hub import is_offline_mode
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from data_loader import not_here


def load_model(name_or_path, random_weights=False):
    """The model in fp32 and its tokenizer, padding on the right.

    fp32 because mixed precision (fp16/bf16, or DeepSpeed's engine) keeps fp32 master
    weights and casts for the forward pass itself; loading 16-bit weights would make the
    optimizer step in 16 bits. `random_weights` builds the architecture from its config
    alone (speed and memory measurements on machines that cannot download the weights).
    """
    if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().is_dir():
        raise ValueError(f"model folder {name_or_path} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as e:
        raise ValueError(not_here(name_or_path, "model") if is_offline_mode() else e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # prompt tokens keep their positions; padding trails
    if random_weights:
        config = AutoConfig.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
    return model, tokenizer


def save_model(trainer, output_dir):
    """Write model and tokenizer to output_dir (rank 0 writes; every rank must call this).

    Under ZeRO-3 each rank holds a slice of every weight: the Trainer gathers the full
    16-bit weights first, which the ZeRO-3 configs allow with
    `stage3_gather_16bit_weights_on_model_save: true` (without it no model file is written).
    """
    trainer.save_model(output_dir)  # also saves the tokenizer passed as processing_class
