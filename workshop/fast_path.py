"""A faster training path for causal LMs: SDPA attention, a chunked language-model loss, and
compiled blocks.

The first two compute what the stock model computes (tests/test_fast_path.py and
tests/test_families.py check it); they change which tensors are materialised, not the result:

* Attention. The model's own SDPA attention (`attn_implementation="sdpa"`, a fused kernel
  that never writes the (batch, heads, q, k) scores to memory) where its family has one, which
  most do; Gemma 2 keeps its eager attention (its attention softcapping has no SDPA form).
  BLOOM has none in transformers: stock BLOOM writes the scores with baddbmm, softmaxes them
  in fp32 and keeps the fp32 and the 16-bit probabilities for the backward, so its attention
  is replaced here by one `F.scaled_dot_product_attention` call that takes ALiBi + mask as one
  additive bias and keeps only that bias (in the query's dtype) for the backward. Generating,
  token by token with a key/value cache, takes BLOOM's stock attention: there the fused
  kernel saves nothing and building its bias costs time (the answers to 50 questions took
  5.6 s instead of 3.7 s on an H200).
* Loss. Stock projects every position, padding included, onto the vocabulary (250,880 words
  for BLOOM, 128,256 for Llama 3) and upcasts those logits to fp32: the largest tensors of the
  step. The chunked loss projects only the positions that have a label, `chunk_size` of them
  at a time, through the model's own output layer (and Gemma's softcap), and recomputes a
  chunk's logits in the backward rather than keeping them: one chunk's logits at a time.
* Compiled blocks (`compile_blocks`, on a GPU). A training step launches thousands of small
  kernels (normalisations, activations, casts, residual adds), and on a small model the GPU
  waits for Python to launch them. torch.compile fuses each decoder block's kernels and CUDA
  graphs replay them with one launch per block; the loss is compiled too (cast, log-softmax
  and pick fused), in one piece whose logits are kept instead of recomputed. Fusion rounds
  differently, so this one is close to stock, not equal.

Only methods of model instances are replaced, never a parameter nor a class, so it works on a
model whose weights ZeRO-3 has partitioned, and `save_pretrained` writes the same files.
"""

import inspect
import types

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.bloom.modeling_bloom import BloomAttention, dropout_add

from workshop.squad import IGNORE_INDEX


def _sdpa_attention_forward(self, hidden_states, residual, alibi, attention_mask, layer_past=None,
                            use_cache=False, output_attentions=False, **kwargs):
    """BloomAttention.forward with the scores, softmax and weighted sum in one SDPA call
    (stock when generating with a key/value cache, or asked for the attention probabilities,
    which SDPA does not return)."""
    if output_attentions or layer_past is not None:
        return BloomAttention.forward(self, hidden_states, residual, alibi, attention_mask,
                                      layer_past, use_cache, output_attentions, **kwargs)
    batch_size, q_length, _ = hidden_states.shape
    query, key, value = self._reshape(self.query_key_value(hidden_states))  # (batch, heads, len, dim)

    # alibi is (batch * heads, 1, kv_length); the causal + padding mask (batch, 1, q_length,
    # kv_length) holds 0 or the dtype's minimum. Stock computes the scores in the query's dtype
    # (autocast casts alibi too); a fp32 minimum would become -inf there, so it is clamped.
    bias = alibi.view(batch_size, self.num_heads, 1, -1).to(query.dtype)
    if attention_mask is not None:
        bias = bias + attention_mask.clamp(min=torch.finfo(query.dtype).min).to(query.dtype)
    context = F.scaled_dot_product_attention(
        query, key, value, attn_mask=bias, scale=self.inv_norm_factor,
        dropout_p=self.attention_dropout.p if self.training else 0.0)
    context = context.transpose(1, 2).reshape(batch_size, q_length, self.hidden_size)
    output = dropout_add(self.dense(context), residual, self.hidden_dropout, self.training)
    return output, None


def use_sdpa_attention(model):
    """Attention through SDPA where the model's family has it (BLOOM: every BloomAttention
    replaced by _sdpa_attention_forward); returns a notice where it keeps its own, else None."""
    bloom = [module for module in model.modules() if isinstance(module, BloomAttention)]
    for module in bloom:
        if module.pretraining_tp > 1 and module.slow_but_exact:
            raise ValueError("the SDPA fast path does not do slow_but_exact tensor-parallel sums")
        module.forward = types.MethodType(_sdpa_attention_forward, module)
    if bloom:
        return None
    if model.config._attn_implementation == "sdpa":
        return None
    if not getattr(model, "_supports_sdpa", False):
        return (f"{model.config.model_type} has no SDPA attention in transformers: the fast path "
                f"keeps its {model.config._attn_implementation} attention")
    model.set_attn_implementation("sdpa")
    return None


# Families whose ...ForCausalLM.forward is `lm_head(body(...))` (Gemma 2 and 3: then a tanh
# softcap), so that the chunked loss computes what their own forward does; tests/test_families.py
# checks each against its stock loss and gradients. Others are refused (fast_path_refusal).
FAMILIES = ("bloom", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
            "gemma3_text", "phi", "phi3", "gpt2", "opt", "olmo2", "smollm3")


def fast_path_refusal(model_type):
    """Why the fast path cannot take a model of this type, or None."""
    if model_type in FAMILIES:
        return None
    return (f"--fast_path True computes the loss from the model's last hidden states and output "
            f"layer, as {', '.join(FAMILIES)} do; {model_type} models may do more there: drop "
            f"--fast_path (the workshop's settings train any causal LM)")


def body_hidden_states(model, input_ids=None, attention_mask=None, **kwargs):
    """The last hidden states of a ...ForCausalLM's body (model.base_model), without a cache."""
    kwargs["use_cache"] = bool(kwargs.get("use_cache"))  # a loss needs no key/value cache
    outputs = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                               return_dict=True, **kwargs)
    return outputs.last_hidden_state, outputs


def _chunk_loss_sum(lm_head, hidden, targets, softcap=None):
    logits = lm_head(hidden).float()
    if softcap:  # Gemma 2 and 3: what their forward does to the logits
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def _recomputed_chunk_loss_sum(lm_head, hidden, targets, softcap=None):
    """_chunk_loss_sum whose backward recomputes the chunk's logits instead of keeping them."""
    return checkpoint(_chunk_loss_sum, lm_head, hidden, targets, softcap, use_reentrant=False)


def chunked_loss_sum(model, hidden, targets):
    """The summed cross-entropy of rows of hidden states against their targets, by chunks of
    model.loss_chunk_size rows (None: one piece), through the model's output layer."""
    lm_head, softcap = model.get_output_embeddings(), getattr(model.config, "final_logit_softcapping", None)
    size = model.loss_chunk_size or max(len(targets), 1)
    # At least one (maybe empty) chunk: a micro-batch without targets still returns a loss
    # that the backward can go through, as stock does (0 with num_items_in_batch, else nan).
    return sum(model.chunk_loss_sum(lm_head, hidden[i:i + size], targets[i:i + size], softcap)
               for i in range(0, max(len(targets), 1), size))


def chunked_causal_lm_loss(hidden_states, model, labels, num_items_in_batch=None, shift_labels=None):
    """transformers' ForCausalLMLoss(model's logits of hidden_states, labels), by chunks.

    Position t predicts labels[t + 1] (or shift_labels[t]); positions whose target is -100
    are dropped before the projection (model.loss_chunk_size None: every position in one
    chunk, none dropped). Each chunk's cross-entropy is summed in fp32 like stock's upcast
    logits, by model.chunk_loss_sum (by default under activation checkpointing: the backward
    recomputes the chunk's logits instead of keeping them). The sum is divided by the number
    of targets, or by `num_items_in_batch` when the Trainer passes it (labels counted over
    every micro-batch of an optimizer step, so that gradient accumulation averages over all).
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    shift_labels = shift_labels.to(hidden_states.device)
    keep = shift_labels != IGNORE_INDEX
    if model.loss_chunk_size is None:  # every position, padding included (cross_entropy skips
        # -100 targets): no boolean indexing, whose size the CPU must wait for the GPU to know
        loss = chunked_loss_sum(model, hidden_states.flatten(0, -2), shift_labels.flatten())
    else:
        loss = chunked_loss_sum(model, hidden_states[keep], shift_labels[keep])
    if num_items_in_batch is None:
        return loss / keep.sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


_forwards = {}  # a model class -> its forward with the chunked loss


def _forward_with_chunked_loss(cls):
    """cls.forward with the same signature (which the Trainer and generate inspect): given
    labels, its loss is chunked_causal_lm_loss and its logits None; else the stock forward.
    A function per class, bound to each model as a method (a deep copy binds to the copy)."""
    if cls not in _forwards:
        stock = cls.forward

        def forward(self, *args, labels=None, **kwargs):
            if labels is None:  # generation, or logits asked for
                return stock(self, *args, **kwargs)
            inputs = inspect.signature(stock).bind_partial(self, *args, **kwargs).arguments
            inputs = {**inputs.pop("kwargs", {}), **inputs}
            del inputs["self"]
            loss_kwargs = {k: inputs.pop(k, None) for k in ("num_items_in_batch", "shift_labels")}
            return_dict = inputs.pop("return_dict", None)
            inputs.pop("logits_to_keep", None)
            hidden, outputs = body_hidden_states(self, **inputs)
            loss = chunked_causal_lm_loss(hidden, self, labels, **loss_kwargs)
            output = CausalLMOutputWithPast(loss=loss, past_key_values=outputs.get("past_key_values"),
                                            hidden_states=outputs.get("hidden_states"),
                                            attentions=outputs.get("attentions"))
            return output if return_dict is not False else output.to_tuple()
        forward.__signature__ = inspect.signature(stock)
        _forwards[cls] = forward
    return _forwards[cls]


def use_chunked_loss(model, chunk_size=1024):
    """Make `model(..., labels=...)` return the chunked loss and no logits; returns `model`.

    chunk_size: positions projected at once; each chunk holds about chunk_size x vocabulary x
    16 bytes during the backward (1024 x 250,880: 4 GB) -- smaller saves memory, larger
    launches fewer and bigger matrix products.
    """
    model.loss_chunk_size = chunk_size
    model.chunk_loss_sum = _recomputed_chunk_loss_sum
    model.forward = types.MethodType(_forward_with_chunked_loss(type(model)), model)
    return model


# One compiled forward per decoder block class: dynamo treats a block's weights as inputs, so all
# blocks share one graph per input shape. CUDA graphs ("reduce-overhead": 2.4x the speed of
# compiling without them for BLOOM on an H200) are recorded once per shape, static shapes
# compiled once per shape; the collator pads lengths to a multiple of
# settings.COMPILED_LENGTH_MULTIPLE to keep them few. Dynamic shapes compiled once in all but
# recorded more often: over the workshop's 3 epochs on an H200, 15 compiling steps and 25.5 s
# with a warm cache, against 11 steps and 16.7 s for static shapes (docs/results.md). Made on
# first use: importing this module compiles nothing.
COMPILE_OPTIONS = dict(mode="reduce-overhead", dynamic=False)
_compiled = {}


def decoder_blocks(model):
    """The model's decoder blocks: the ModuleList of its body with one module per layer."""
    layers = model.config.num_hidden_layers
    return next((list(m) for m in model.base_model.modules()
                 if isinstance(m, torch.nn.ModuleList) and len(m) == layers), [])


def compile_blocks(model):
    """Run every decoder block's training forward, and the chunked loss, compiled; returns
    `model`.

    Only training (module in train mode, gradients on) takes the compiled path: evaluation
    and generation stay eager, since generating changes the shape at every token. Each new
    input shape compiles once (seconds), so a run's first steps are slower.
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)  # 8
    # lengths x (full batch, last smaller batch); above the limit dynamo would fall back to eager
    for block in decoder_blocks(model):
        block.forward = types.MethodType(_block_forward_compiled_in_training, block)
    # The loss in one compiled piece over every position (16 x 512 at most): once the GPU runs
    # faster than Python launches its kernels, waiting for the GPU to count the labelled
    # positions costs more than projecting the padding too (~20% of positions when grouped).
    model.loss_chunk_size = None
    model.chunk_loss_sum = torch.compile(_chunk_loss_sum, dynamic=True)  # lengths vary
    return model


def _block_forward_compiled_in_training(self, *args, **kwargs):
    stock = type(self).forward
    if self.training and torch.is_grad_enabled():
        if stock not in _compiled:
            _compiled[stock] = torch.compile(stock, **COMPILE_OPTIONS)
        return _compiled[stock](self, *args, **kwargs)
    return stock(self, *args, **kwargs)


def enable_fast_path(model, chunk_size=1024, compiled=False):
    """SDPA attention and the chunked loss on a causal LM of FAMILIES, with its blocks and loss
    compiled if `compiled`; returns `model`. A notice where it keeps the model's own attention
    is printed once."""
    refusal = fast_path_refusal(model.config.model_type)
    if refusal:
        raise ValueError(refusal)
    notice = use_sdpa_attention(model)
    if notice:
        print(f"notice: {notice}")
    model = use_chunked_loss(model, chunk_size)
    return compile_blocks(model) if compiled else model
