"""A faster training path for BLOOM: SDPA attention and a chunked language-model loss.

Both compute what the stock eager model computes (tests/test_fast_path.py checks it); they
change which tensors are materialised, not the result:

* Attention. Stock BLOOM writes the (batch, heads, q, k) scores with baddbmm, adds the mask,
  softmaxes them in fp32 and keeps the fp32 and the 16-bit probabilities for the backward.
  `F.scaled_dot_product_attention` takes ALiBi + mask as one additive bias and runs a fused
  kernel that never writes scores or probabilities to memory: it keeps only the bias (in the
  query's dtype) for the backward. Generating, token by token with a key/value cache, takes
  the stock attention: there the fused kernel saves nothing and building its bias costs time
  (the answers to 50 questions took 5.6 s instead of 3.7 s on an H200).
* Loss. Stock projects every position, padding included, onto the 250,880-token vocabulary
  and upcasts those logits to fp32: the largest tensors of the step. The chunked loss projects
  only the positions that have a label, `chunk_size` of them at a time, and recomputes a
  chunk's logits in the backward rather than keeping them: one chunk's logits at a time.
* Compiled blocks (`compile_blocks`, on a GPU). A training step of bloom-560m launches about
  3,000 kernels, half of the GPU's time in small elementwise ones (BLOOM's tanh GELU, casts,
  dropout-adds), and the GPU waits for Python to launch them. torch.compile fuses each
  transformer block's kernels and CUDA graphs replay them with one launch per block; the loss
  is compiled too (cast, log-softmax and pick fused), in one piece whose logits are kept
  instead of recomputed. Fusion rounds differently, so this one is close to stock, not equal.

Only methods of model instances are replaced (types.MethodType), never a parameter nor a
class, so it works on a model whose weights ZeRO-3 has partitioned, and `save_pretrained`
writes the same files as before.
"""
import types

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions
from transformers.models.bloom.modeling_bloom import (BloomAttention, BloomBlock, BloomForCausalLM,
                                                      dropout_add)

IGNORE_INDEX = -100  # label of positions without a loss, as in transformers


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
    """Make every BloomAttention of `model` compute attention with SDPA; returns `model`."""
    for module in model.modules():
        if isinstance(module, BloomAttention):
            if module.pretraining_tp > 1 and module.slow_but_exact:
                raise ValueError("the SDPA fast path does not do slow_but_exact tensor-parallel sums")
            module.forward = types.MethodType(_sdpa_attention_forward, module)
    return model


def _chunk_loss_sum(lm_head, hidden, targets):
    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def _recomputed_chunk_loss_sum(lm_head, hidden, targets):
    """_chunk_loss_sum whose backward recomputes the chunk's logits instead of keeping them."""
    return checkpoint(_chunk_loss_sum, lm_head, hidden, targets, use_reentrant=False)


def chunked_causal_lm_loss(hidden_states, lm_head, labels, num_items_in_batch=None,
                           shift_labels=None, chunk_size=1024,
                           chunk_loss_sum=_recomputed_chunk_loss_sum):
    """transformers' ForCausalLMLoss(lm_head(hidden_states), labels), computed by chunks.

    Position t predicts labels[t + 1] (or shift_labels[t]); positions whose target is -100
    are dropped before the projection (chunk_size None: every position in one chunk, none
    dropped). Each chunk's cross-entropy is summed in fp32 like stock's upcast logits, by
    `chunk_loss_sum` (by default under activation checkpointing: the backward recomputes the
    chunk's logits instead of keeping them). The sum is divided by the number of targets, or
    by `num_items_in_batch` when the Trainer passes it (labels counted over every micro-batch
    of an optimizer step, so that gradient accumulation averages over all of them).
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    shift_labels = shift_labels.to(hidden_states.device)
    keep = shift_labels != IGNORE_INDEX
    if chunk_size is None:  # one chunk of every position, padding included (cross_entropy
        # skips -100 targets): no boolean indexing, whose size the CPU must wait for the GPU to know
        loss = chunk_loss_sum(lm_head, hidden_states.flatten(0, -2), shift_labels.flatten())
    else:
        hidden, targets = hidden_states[keep], shift_labels[keep]
        # At least one (maybe empty) chunk: a micro-batch without targets still returns a loss
        # that the backward can go through, as stock does (0 with num_items_in_batch, else nan).
        loss = sum(chunk_loss_sum(lm_head, hidden[i:i + chunk_size], targets[i:i + chunk_size])
                   for i in range(0, max(len(targets), 1), chunk_size))
    if num_items_in_batch is None:
        return loss / keep.sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def _forward_with_chunked_loss(self, input_ids=None, past_key_values=None, attention_mask=None,
                               inputs_embeds=None, labels=None, use_cache=None,
                               output_attentions=None, output_hidden_states=None,
                               return_dict=None, logits_to_keep=0, **kwargs):
    """BloomForCausalLM.forward (same signature, which the Trainer and generate inspect);
    given labels, its loss is chunked_causal_lm_loss and its logits None."""
    if labels is None:  # generation, or logits asked for: the stock forward
        return BloomForCausalLM.forward(
            self, input_ids=input_ids, past_key_values=past_key_values,
            attention_mask=attention_mask, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=return_dict, logits_to_keep=logits_to_keep, **kwargs)
    outputs = self.transformer(  # no key/value cache unless asked for: a loss needs none
        input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
        inputs_embeds=inputs_embeds, use_cache=bool(use_cache), output_attentions=output_attentions,
        output_hidden_states=output_hidden_states, return_dict=True)
    loss = chunked_causal_lm_loss(outputs.last_hidden_state, self.lm_head, labels,
                                  kwargs.get("num_items_in_batch"), kwargs.get("shift_labels"),
                                  self.loss_chunk_size, self.chunk_loss_sum)
    output = CausalLMOutputWithCrossAttentions(
        loss=loss, past_key_values=outputs.past_key_values,
        hidden_states=outputs.hidden_states, attentions=outputs.attentions)
    return_dict = return_dict if return_dict is not None else self.config.return_dict
    return output if return_dict else output.to_tuple()


def use_chunked_loss(model, chunk_size=1024):
    """Make `model(..., labels=...)` return the chunked loss and no logits; returns `model`.

    chunk_size: positions projected at once; each chunk holds about chunk_size x vocabulary x
    16 bytes during the backward (1024 x 250,880: 4 GB) -- smaller saves memory, larger
    launches fewer and bigger matrix products.
    """
    model.loss_chunk_size = chunk_size
    model.chunk_loss_sum = _recomputed_chunk_loss_sum
    model.forward = types.MethodType(_forward_with_chunked_loss, model)
    return model


# One compiled BloomBlock.forward for every block: dynamo treats a block's weights as inputs, so
# the 24 blocks share one graph per input shape. CUDA graphs ("reduce-overhead": 2.4x the speed
# of compiling without them on an H200) are recorded once per shape, static shapes compiled once
# per shape; the collator pads lengths to a multiple of settings.COMPILED_LENGTH_MULTIPLE to keep them
# few. Dynamic shapes compiled once in all but recorded more often: over the workshop's 3 epochs
# on an H200, 15 compiling steps and 25.5 s with a warm cache, against 11 steps and 16.7 s for
# static shapes on the same kind of machine (docs/results.md). Made on first use: importing
# this module compiles nothing.
COMPILE_OPTIONS = dict(mode="reduce-overhead", dynamic=False)
_compiled = {}


def _compiled_block_forward(*args, **kwargs):
    if "block" not in _compiled:
        _compiled["block"] = torch.compile(BloomBlock.forward, **COMPILE_OPTIONS)
    return _compiled["block"](*args, **kwargs)


def compile_blocks(model):
    """Run every BloomBlock's training forward, and the chunked loss, compiled; returns `model`.

    Only training (module in train mode, gradients on) takes the compiled path: evaluation
    and generation stay eager, since generating changes the shape at every token. Each new
    input shape compiles once (seconds), so a run's first steps are slower.
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)  # 8
    # lengths x (full batch, last smaller batch); above the limit dynamo would fall back to eager
    for block in model.modules():
        if isinstance(block, BloomBlock):
            block.forward = types.MethodType(_block_forward_compiled_in_training, block)
    # The loss in one compiled piece over every position (16 x 512 at most): once the GPU runs
    # faster than Python launches its kernels, waiting for the GPU to count the labelled
    # positions costs more than projecting the padding too (~20% of positions when grouped).
    model.loss_chunk_size = None
    model.chunk_loss_sum = torch.compile(_chunk_loss_sum, dynamic=True)  # lengths vary
    return model


def _block_forward_compiled_in_training(self, *args, **kwargs):
    if self.training and torch.is_grad_enabled():
        return _compiled_block_forward(self, *args, **kwargs)
    return BloomBlock.forward(self, *args, **kwargs)


def enable_fast_path(model, chunk_size=1024, compiled=False):
    """SDPA attention and the chunked loss on a BloomForCausalLM, with its blocks and loss
    compiled if `compiled`; returns `model`."""
    model = use_chunked_loss(use_sdpa_attention(model), chunk_size)
    return compile_blocks(model) if compiled else model
