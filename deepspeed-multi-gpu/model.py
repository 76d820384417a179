"""Load the model (BLOOM, or any causal LM transformers builds) and its tokenizer where they will
train; the Trainer saves them so that `from_pretrained` reloads them."""
import contextlib
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations import is_deepspeed_zero3_enabled


def load_model(name_or_path, random_weights=False, device="cpu"):
    """The model in fp32 on the device it trains on, and its tokenizer, padding on the right.

    fp32 because mixed precision (fp16/bf16, or DeepSpeed's engine) keeps fp32 master
    weights and casts for the forward pass itself; loading 16-bit weights would make the
    optimizer step in 16 bits. Building it on the GPU saves copying it there (and, with
    `random_weights`, initialising it on the CPU: 8 s for bloom-560m); under ZeRO-3 the
    Trainer's DeepSpeed config makes transformers partition it as it is built instead.
    `random_weights` builds the architecture from its config alone (speed and memory
    measurements on machines that cannot download the weights).
    """
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:  # Llama's, Mistral's and GPT-2's have none
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of the loss anyway
        if os.environ.get("RANK", "0") == "0":
            print(f"notice: the tokenizer has no pad token: padding with its end-of-text token "
                  f"{tokenizer.eos_token!r}")
    tokenizer.padding_side = "right"  # prompt tokens keep their positions; padding trails
    device = None if is_deepspeed_zero3_enabled() else device
    if random_weights:
        with torch.device(device) if device else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(name_or_path),
                                                     dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32,
                                                     device_map=device)
    return model, tokenizer
