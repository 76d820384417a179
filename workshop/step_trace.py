"""One micro-batch of training replayed on fake tensors (no memory, no arithmetic, no GPU): the
model's own code, the Trainer's autocast, gradient checkpointing and the fast path's loss as
train.py runs them, with every tensor that an op creates counted while it lives. What the memory
plan (workshop/memory_plan.py) takes from a model's code rather than from a formula per family.

    traced_step(config, batch, length, weights="amp", gradient_checkpointing=False,
                fast_path=False, gradients_exist=True) -> Trace
        weights: "amp" fp32 weights under 16-bit autocast (the Trainer), "16bit" (DeepSpeed's
        engine), "fp32". gradients_exist: the parameters' gradients are there before the step
        (gradient accumulation, DeepSpeed's buffers) and are not counted; otherwise the
        backward's new gradients are.

Counted: the activations saved for the backward, autocast's 16-bit weight copies, the logits
and the loss, every temporary, and the new gradients; not the weights, nor gradients that
existed before. The CPU stands in for the GPU (autocast in bf16: the same 2 bytes as fp16) and
SDPA's CPU kernel for the GPU's (both keep the output and a log-sum-exp per query).
"""
import contextlib
import functools
import io
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from workshop.models import build


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages that ops create and that are still alive (not those in `known`);
    their peak, and the storages alive at the peak."""

    def __init__(self, known):
        super().__init__()
        self.known, self.live, self.now, self.peak, self.at_peak = known, {}, 0, 0, {}

    def _gone(self, key):
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in self.known:
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    weakref.finalize(storage, self._gone, key)
        if self.now > self.peak:
            self.peak, self.at_peak = self.now, dict(self.live)
        return out


@dataclass(frozen=True)
class Trace:
    activations: int  # bytes alive when the model's body has run (before the output projection)
    peak: int  # the highest bytes alive during the forward, the loss and the backward
    gradients_at_peak: int  # of which new gradients (only when gradients_exist is False)


def traced_step(config, batch, length, weights="amp", gradient_checkpointing=False, fast_path=False,
                gradients_exist=True):
    """The Trace of one micro-batch of `batch` x `length` tokens (the module docstring). Every
    block is replayed: where the peak falls depends on the depth (a shallow model of a large
    vocabulary peaks in the embedding's backward, a deep one at the loss)."""
    return _traced(config.to_json_string(), batch, length, weights, gradient_checkpointing,
                   fast_path, gradients_exist)


@functools.lru_cache(maxsize=64)
def _traced(config_json, batch, length, weights, gradient_checkpointing, fast_path, gradients_exist):
    import json

    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoConfig
    from transformers import logging as hf_logging

    keys = json.loads(config_json)
    config = AutoConfig.for_model(keys.pop("model_type"), **keys)
    config.use_cache = False  # training: no key/value cache (gradient checkpointing says so too)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checkpointing and attention notices: not for a plan
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            model = build(config, dtype=torch.bfloat16 if weights == "16bit" else torch.float32)
            model.train()
            if gradient_checkpointing:  # as the Trainer enables it
                model.activation_checkpointing_enable()
            if fast_path:
                from workshop.fast_path import enable_fast_path
                with contextlib.redirect_stdout(io.StringIO()):  # its notice is for runs
                    enable_fast_path(model)
            parameters = list(model.parameters())
            known = {p.untyped_storage()._cdata for p in parameters}
            if gradients_exist:
                for p in parameters:
                    p.grad = torch.zeros_like(p)
                    known.add(p.grad.untyped_storage()._cdata)
            ids = torch.zeros(batch, length, dtype=torch.long)
            mode = LiveBytes(known)
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if weights == "amp" else contextlib.nullcontext()
            with mode, autocast:
                if fast_path:  # every position labelled: the fast path's loss without its selection
                    from workshop.fast_path import body_hidden_states, chunked_loss_sum
                    hidden, _ = body_hidden_states(model, ids, torch.ones_like(ids))
                    activations = mode.now
                    rows = hidden[:, :-1].reshape(-1, hidden.shape[-1]).clone()  # the labelled positions
                    loss = chunked_loss_sum(model, rows, ids[:, 1:].reshape(-1)) / rows.shape[0]
                else:
                    seen = {}
                    hook = model.get_output_embeddings().register_forward_pre_hook(
                        lambda module, args: seen.setdefault("activations", mode.now) and None)
                    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
                    hook.remove()
                    activations = seen["activations"]
            with mode:
                loss.backward()
            grads = {p.grad.untyped_storage()._cdata for p in parameters if p.grad is not None}
    finally:
        hf_logging.set_verbosity(verbosity)
    return Trace(activations, mode.peak, sum(n for k, n in mode.at_peak.items() if k in grads))
