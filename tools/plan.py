"""Choose a configuration before you submit: predicted peak GPU and host memory of every
configuration train.py can run, from the model's architecture alone (no GPU, no weights).

    python tools/plan.py bloom-7b1 --gpus_per_node 4
    python tools/plan.py bloom-7b1 --gpu_memory_gib 139.8 --host_memory_gib 125   # one H200
    python tools/plan.py prepared/model --gpu_memory_gib 24          # a folder with config.json

MODEL is one of bloom-560m, bloom-1b7, bloom-3b, bloom-7b1 (tools/bloom_architecture.py), a
folder with config.json, or a hub id (its config is read from the local cache, else the hub).
The model is built on PyTorch's meta device to count its parameters. One Markdown row per
configuration (no DeepSpeed, ZeRO-1/2/3, offload; each with and without gradient
checkpointing; the fast path, compiled as train.py would compile it or not), then the fastest
one that fits with 10% to spare.

Python API (tools/tables.py imports it; keep it stable):

    predict(model, *, world_size=1, nodes=1, per_device_train_batch_size=4,
            gradient_accumulation_steps=4, max_length=512, precision="fp16", zero_stage=None,
            offload_optimizer=False, offload_param=False, gradient_checkpointing=False,
            fast_path=False, compile_blocks=False, pad_to_max_length=None, longest=None,
            later_longest=None, length_multiple=None, pin_memory=True, save_model=True,
            built_on_host=False) -> dict
        model: a name/folder/hub id as above, a transformers config, a dict of BLOOM config keys
          (vocab_size, hidden_size, n_layer, n_head), or architecture()'s result.
        zero_stage None = no DeepSpeed (the Trainer and torch.autocast, one GPU: DDP's buckets
          are not counted); 0-3 = DeepSpeed.
        pad_to_max_length None = the workshop's choice (pad, unless fast_path); longest = tokens
          of the longest training sequence, the length of the largest batch when not padding
          (None: max_length, the worst case); later_longest = the longest after the first
          optimizer step (None: longest; "the first step" below); length_multiple = what the
          collator pads lengths to (None: train.py's, 64 with compiled blocks, else 8).
          save_model: rank 0 gathers the weights it writes on the host. built_on_host: the fp32
          model built on the host first, as train.py did before run_metrics.json's schema 2.
        Returns MiB per GPU: gpu_mib (predicted torch.cuda.max_memory_allocated()), and its
        parts model_states_mib, activations_mib, logits_mib, workspace_mib; phase (when the
        peak comes); host_mib (ru_maxrss of the rank that saves the model) and host_node_mib
        (all ranks of one node); parameters, sequence_length.
    predict_run(run_metrics, model=None, **settings) -> predict()'s dict for the configuration
        a run_metrics.json records (model: its architecture, where the run does not record it;
        settings: predict()'s keywords for what it does not record, e.g. later_longest).
    fits(mib, capacity_mib, gpu=True) -> "yes", "tight" or "no" (below).
    architecture(model) -> Arch (vocabulary, hidden size, layers, heads, parameter sizes).
    Each raises ValueError with a one-line reason for a model it cannot read or that is not BLOOM.

The memory model (bytes; P parameters, b = 2 for fp16/bf16 or 4 for fp32, N GPUs, T = batch x
sequence tokens per micro-batch, V x H the tied embedding / lm_head weight). Each term is
counted from how the code allocates; tests/test_plan.py replays BLOOM's code on fake tensors to
check the activation and loss terms, and compares every committed GPU run. The peak is the
largest of five moments of a step:
  forward end   states + autocast's 16-bit weight copies + activations + the loss's forward
  loss backward states + the copies kept for backward + activations + the loss's backward
  last block    the backward through the last block, with the lm_head gradient waiting for the
                embedding's (tied weights) and, for ZeRO-2 with accumulation, two gradient buffers
  end backward  every gradient, and the embedding's V x H gradient before it is added in
  optimizer     DeepSpeed's step: a flat 16-bit copy of the gradients and their fp32 version
The first step: without DeepSpeed, AdamW's moments (8 bytes/parameter) come with the first
optimizer step, and group_by_length (the fast path) puts the longest batch first in each epoch.
A run of less than two epochs may so peak later at a shorter length: bloom-7b1's eager fast
path on the H200 (3 steps) ran 432 tokens before the moments and peaked at 272 in step 2 (120
GB); the workshop's 3 epochs meet 432 tokens again with them (134 GB, which the plan shows;
both measured step by step in docs/results/h200-2026-12-01/step-peaks).
Host, per rank: Python, torch and CUDA (HOST_CUDA_MIB), offloaded optimizer states, ZeRO-3's
16-bit partition copied through the host once (DeepSpeed's zero/utils.py defragment), and on
rank 0 the weights it saves; built_on_host adds the fp32 model before CUDA (HOST_START_MIB).
Fits: the GPU's memory as torch reports it, less CUDA_CONTEXT_MIB and FRAGMENTATION (both from
the bloom-7b1 out-of-memory on the H200) is usable: "yes" = the peak within 90% of it (room for
the prediction's error), "tight" = within it (may still fail), "no" = above. Host: the same
against the host's memory.
Fitted: the GPU workspace and the host's memory before and after CUDA starts, to the H100 runs
of 2026-11-24 (docs/results.md); nothing else. Not DeepSpeed's estimators: they count fp32
gradients that live only in the optimizer step, and a 1.5 buffer factor on the host.
Not measured, so less sure: several GPUs (ZeRO-3's gathered weights), compiled blocks beyond
bloom-560m, real weights (random ones ran). Evaluation and generation need less than training.
"""
import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bloom_architecture import BLOOM  # noqa: E402  (hidden size, layers, heads of each size)


def _workshop_config():
    """baseline/config.py (FAST_PATH, compile_blocks_refusal), under a name of its own."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "baseline" / "config.py"
    spec = importlib.util.spec_from_file_location("workshop_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

MIB = 2**20
# Fitted to the committed H100 runs; every other term is counted.
WORKSPACE_MIB = 66  # GPU: allocated beyond the counted tensors on every bloom-560m run (66-68:
# cuBLAS workspaces, inputs, masks, the embedding's output); 70-110 on bloom-1b7/3b runs
HOST_START_MIB = 930  # host: a rank before CUDA starts (Python, torch, transformers, datasets):
# the runs that build the model on the host peak there, at 914-928 MiB + the model
HOST_CUDA_MIB = 2000  # host: the same rank once CUDA, cuBLAS and NCCL are loaded: the ZeRO-3
# runs, which build nothing on the host, peak at 1,974-2,000 MiB + their 16-bit weights (the
# H200's ranks that built on the GPU and saved nothing: 1,513-1,826 MiB, DeepSpeed's 2,286-2,363)
# DeepSpeed settings the workshop's configs leave at DeepSpeed's defaults (zero/config.py).
ZERO1_BUCKET = 5e8  # reduce_bucket_size: ds_zero1.json does not set it (ds_zero2/3: "auto", hidden^2)
MAX_LIVE_PARAMETERS = 1e9  # stage3_max_live_parameters: gathered ZeRO-3 weights kept for reuse
SUB_GROUP_SIZE = 1e9  # ZeRO-3 steps its optimizer this many parameters at a time
LOSS_CHUNK = 1024  # positions per chunk of the fast path's loss (fast_path.use_chunked_loss)
MARGIN = 0.9  # "yes": the prediction within 90% of the usable memory
# The bloom-7b1 out-of-memory on the H200 (h200-2026-12-01/large-models): 137.50 GiB in use by the
CUDA_CONTEXT_MIB = 750  # process, of which PyTorch reserved 136.77: 132.72 allocated and
FRAGMENTATION = 0.03  # 4.05 cached but too fragmented for the 3.83 GiB asked (3% of the allocated)


@dataclass
class Arch:
    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    sizes: list  # elements of each parameter (tied weights once)
    matrices: int  # elements of the 2-D parameters (the Trainer's weight-decay group)

    @property
    def params(self):
        return sum(self.sizes)


_ARCHS = {}


def architecture(model):
    """Arch of a BLOOM size name, a folder with config.json, a hub id, a config or a dict."""
    if isinstance(model, Arch):
        return model
    key = json.dumps(model, sort_keys=True) if isinstance(model, dict) else model
    if isinstance(key, str) and key in _ARCHS:
        return _ARCHS[key]
    import torch
    from transformers import AutoModelForCausalLM, BloomConfig, logging
    logging.set_verbosity_error()
    if isinstance(model, dict):
        config = BloomConfig(**model)
        name = "architecture " + ", ".join(f"{k} {v}" for k, v in model.items())
    elif isinstance(model, str) and model in BLOOM:
        hidden, layers, heads = BLOOM[model]
        config = BloomConfig(vocab_size=250_880, hidden_size=hidden, n_layer=layers, n_head=heads)
        name = model
    elif isinstance(model, (str, Path)):
        config, name = _config(str(model)), str(model)
    else:
        config, name = model, getattr(model, "name_or_path", "") or type(model).__name__
    if config.model_type != "bloom":
        raise ValueError(f"{name} is a {config.model_type} model; plan.py counts BLOOM's blocks "
                         f"(modeling_bloom.py): give a BLOOM model")
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config)
    params = list(built.parameters())  # tied weights (embedding = lm_head) once
    arch = Arch(name, config.vocab_size, config.hidden_size, config.n_layer, config.n_head,
                [p.numel() for p in params], sum(p.numel() for p in params if p.dim() >= 2))
    if isinstance(key, str):
        _ARCHS[key] = arch
    return arch


def _config(name):
    """A transformers config from a folder, or a hub id (the local cache first)."""
    from transformers import AutoConfig
    if Path(name).expanduser().is_dir():
        if not (Path(name).expanduser() / "config.json").is_file():
            raise ValueError(f"{name} has no config.json: give a model folder (e.g. prepared/model)")
        return AutoConfig.from_pretrained(Path(name).expanduser())
    if name.startswith((".", "/", "~")):
        raise ValueError(f"model folder {name} does not exist")
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ValueError(f"{name} is not cached here and the hub cannot be reached "
                         f"({type(e).__name__}): give one of {', '.join(BLOOM)}, a folder with "
                         f"config.json, or run where the hub is reachable") from None


# --- the terms -----------------------------------------------------------------------------

def block_activations(a, batch, length, b, amp, attention):
    """Bytes one BLOOM block keeps for its backward (counted in modeling_bloom.py).

    Per token and hidden unit: the block input and the attention output (the residual stream:
    fp32 under autocast, whose adds promote), the two layer norms' outputs as the next matmul
    saw them, query, key and value, the attention's context, the 4h pre-GELU and the GELU
    output: 2 residual + 14 b. Per (head, query, key) for eager attention: the fp32 softmax
    and its 16-bit copy for the bmm (one tensor in fp32); SDPA keeps only the ALiBi + mask bias
    (fast_path.py) and a logsumexp per query. Dropout is 0 in BLOOM's configs: no masks.
    """
    tokens_hidden, scores = batch * length * a.hidden, batch * a.heads * length * length
    residual = 4 if amp else b
    if attention == "eager":
        per_score = 4 + b if b < 4 else 4
        return tokens_hidden * (2 * residual + 14 * b) + scores * per_score
    return tokens_hidden * (2 * residual + 14 * b) + scores * b + batch * a.heads * length * 4


def loss_bytes(a, tokens, labels, b, fast_path, compiled):
    """(forward, backward) peak bytes of the logits and the loss.

    Stock (transformers' ForCausalLMLoss): the 16-bit logits of every position (padding too),
    their fp32 upcast and the fp32 log-softmax in the forward; in the backward the log-softmax
    kept for it, its incoming and its outgoing gradient: 3 fp32 (tokens x vocabulary) tensors.
    Fast path: the same for one chunk of LOSS_CHUNK labelled positions, recomputed in the
    backward, while the 16-bit lm_head weight gradient of the chunks before it waits.
    Compiled: one piece over every position that keeps the 16-bit logits
    (fast_path.compile_blocks; checked against bloom-560m runs only).
    """
    upcast = b if b < 4 else 0  # fp32 logits are not copied by .float()
    if fast_path and compiled:
        return tokens * a.vocab * b, tokens * a.vocab * b
    if fast_path:
        chunk = min(LOSS_CHUNK, labels)
        waiting = b * a.vocab * a.hidden if labels > chunk else 0  # earlier chunks' weight gradient
        return chunk * a.vocab * (upcast + 8), chunk * a.vocab * 12 + waiting
    return tokens * a.vocab * (upcast + 8), tokens * a.vocab * 12


def model_states(a, c):
    """Bytes per GPU of weights, gradients and optimizer states, named by where they come from.

    Returns a dict: fb (during the forward and backward), full (once the backward has made
    every gradient), step (during DeepSpeed's optimizer step).
    """
    P, N, b, acc = a.params, c["world_size"], c["b"], c["gradient_accumulation_steps"] > 1
    stage = c["zero_stage"]
    if stage is None:  # the Trainer: fp32 weights (4), fp32 gradients (4), AdamW's moments (8);
        # gradients exist between the micro-batches of an accumulation, else only from the backward
        kept = 4 * P + 8 * P
        return dict(fb=kept + 4 * P * acc, full=kept + 4 * P, step=kept + 4 * P)  # fused AdamW
    shard = N if stage >= 1 else 1  # ZeRO-1+: each rank keeps 1/N of the optimizer states
    params = 0 if c["offload_param"] else b * P / (N if stage == 3 else 1)  # 16-bit weights
    optimizer = 0 if c["offload_optimizer"] else 12 * P / shard  # fp32 master + two moments
    grads = 0 if c["offload_optimizer"] else b * P / (N if stage >= 2 else 1)  # 16-bit gradients
    extra = 0
    if stage == 2 and c["offload_optimizer"]:  # stage_1_and_2.py temp_grad_buffer_for_gpu_offload:
        extra = b * max(a.sizes)  # one buffer the size of the largest parameter
    if stage == 3 and (N > 1 or c["offload_param"]):  # gathered weights kept for their reuse
        extra += b * min(P, MAX_LIVE_PARAMETERS)  # (at one GPU without offload: the partitions)
    step = params + optimizer + grads + extra
    if not c["offload_optimizer"]:  # the step flattens the 16-bit gradient partition and
        # converts it to fp32 (stage_1_and_2.py step); ZeRO-3 converts one sub-group at a time
        step += 4 * min(P / N, SUB_GROUP_SIZE) if stage == 3 else (b + 4) * P / shard
    return dict(fb=params + optimizer + grads * acc + extra, full=params + optimizer + grads + extra,
                step=step)


def buckets(a, c):
    """(during the forward and backward, during the backward) bytes of DeepSpeed's buffers.

    ZeRO-1 reduces through one bucket of reduce_bucket_size elements (DeepSpeed's default:
    ds_zero1.json does not set it), allocated by the backward and kept across accumulation;
    ZeRO-2/3 ("auto": hidden^2) two, for overlap_comm, and ZeRO-3 a prefetch bucket (0.9 x that).
    """
    stage, b = c["zero_stage"], c["b"]
    if stage == 1:
        kept = b * ZERO1_BUCKET
        return (kept if c["gradient_accumulation_steps"] > 1 else 0), kept
    if stage in (2, 3):
        kept = b * a.hidden ** 2 * (2 + 0.9 * (stage == 3))
        return kept, kept
    return 0, 0


def host_states(a, c):
    """Host bytes per rank that the optimizer keeps with offload (DeepSpeed's CPU buffers).

    Buffers DeepSpeed pins come from PyTorch's pinned-memory allocator, which rounds every
    block up to a power of two and keeps freed blocks (ATen/core/CachingHostAllocator.h).
    """
    if not c["offload_optimizer"]:
        return 0
    P, N, b = a.params, c["world_size"], c["b"]
    groups = [a.matrices / N, (P - a.matrices) / N]  # the Trainer's decay / no-decay groups

    def pin(nbytes):
        return 2 ** math.ceil(math.log2(nbytes)) if c["pin_memory"] and nbytes >= 1 else nbytes

    adam = 8 * P / N  # DeepSpeedCPUAdam's two fp32 moments, not pinned
    if c["zero_stage"] == 2:  # per group: fp32 master, a 16-bit copy for the GPU, fp32 gradients
        total = adam + sum(pin(4 * g) + pin(b * g) + pin(4 * g) for g in groups if g)
        total += pin(b * max(a.sizes))  # temp_grad_buffer_for_cpu_offload
        if c["gradient_accumulation_steps"] > 1:  # accumulated_grads_in_cpu: one per parameter
            total += sum(pin(b * s) for s in a.sizes) / N
        return total
    sub_groups = [min(SUB_GROUP_SIZE, g - i) for g in groups
                  for i in range(0, math.ceil(g), int(SUB_GROUP_SIZE))]
    total = adam + 4 * P / N + pin(b * P / N)  # fp32 master (a plain copy), 16-bit gradient partitions
    total += sum(pin(4 * s) for s in sub_groups)  # each sub-group's fp32 gradient
    if c["offload_param"]:  # zero.Init's pinned partitions, then one flat 16-bit copy per group
        total += sum(pin(b * s / N) for s in a.sizes) + sum(pin(b * g) for g in groups if g)
    return total


def sequence_length(c, longest):
    """Tokens per sequence in the largest micro-batch whose longest sequence is `longest`."""
    if c["pad_to_max_length"]:
        return c["max_length"]
    longest = min(longest or c["max_length"], c["max_length"])
    multiple = c["length_multiple"] or (64 if c["compile_blocks"] else 8)  # train.py's collator
    return -(-longest // multiple) * multiple


def predict(model, *, world_size=1, nodes=1, per_device_train_batch_size=4,
            gradient_accumulation_steps=4, max_length=512, precision="fp16", zero_stage=None,
            offload_optimizer=False, offload_param=False, gradient_checkpointing=False,
            fast_path=False, compile_blocks=False, pad_to_max_length=None, longest=None,
            later_longest=None, length_multiple=None, pin_memory=True, save_model=True,
            built_on_host=False):
    """Peak GPU memory per GPU, host memory per rank and node (the module docstring says how)."""
    a = architecture(model)
    c = dict(world_size=world_size, nodes=nodes, max_length=max_length, zero_stage=zero_stage,
             gradient_accumulation_steps=gradient_accumulation_steps, length_multiple=length_multiple,
             offload_optimizer=offload_optimizer, offload_param=offload_param,
             compile_blocks=compile_blocks and fast_path, pin_memory=pin_memory,
             pad_to_max_length=(not fast_path) if pad_to_max_length is None else pad_to_max_length,
             b=4 if precision == "fp32" else 2)
    P, b, B, VH = a.params, c["b"], per_device_train_batch_size, a.vocab * a.hidden
    amp = zero_stage is None and b == 2  # the Trainer's torch.autocast over fp32 weights
    s = model_states(a, c)
    copies = 2 * P if amp else 0  # autocast caches a 16-bit copy of each weight for the forward
    kept_copies = b * VH if amp and gradient_checkpointing else copies  # checkpointed blocks recast
    grad_bytes = 4 if zero_stage is None else b
    second = (b * P / world_size if zero_stage == 2 and gradient_accumulation_steps > 1
              and not offload_optimizer else 0)  # the previous micro-batch's gradient partition
    bucket_fb, bucket_bwd = buckets(a, c)

    def moments(L, missing):
        """name: (model states, activations, logits and loss, DeepSpeed's buckets) in bytes, of a
        step whose largest micro-batch is L tokens long, with `missing` bytes of states not there yet."""
        block = block_activations(a, B, L, b, amp, "sdpa" if fast_path else "eager")
        activations = a.layers * block
        if gradient_checkpointing:  # each block keeps its input; the backward recomputes one block
            activations = a.layers * B * L * a.hidden * (4 if amp else b)
        loss_fwd, loss_bwd = loss_bytes(a, B * L, B * (L - 1), b, fast_path, c["compile_blocks"])
        fb, full = s["fb"] - missing, s["full"] - missing
        return {
            "forward end": (fb + copies, activations, loss_fwd, bucket_fb),
            "loss backward": (fb + kept_copies, activations, loss_bwd, bucket_fb),
            "last block backward": (fb + kept_copies + second + grad_bytes * VH,
                                    activations + block * (1 + gradient_checkpointing), 0, bucket_bwd),
            "end of backward": (full + grad_bytes * VH, 0, 0, bucket_bwd),
            "optimizer step": (s["step"], 0, 0, 0)}

    L, first = sequence_length(c, later_longest or longest), sequence_length(c, longest)
    phases = moments(L, 0)
    if zero_stage is None and first > L:  # the longest batch came before AdamW's moments
        phases.update({f"{k} (step 1)": v for k, v in moments(first, 8 * P).items()})
    phase = max(phases, key=lambda k: sum(phases[k]))
    states, acts, logits, bucket = phases[phase]
    workspace = WORKSPACE_MIB * MIB + bucket
    ranks_per_node = max(world_size // nodes, 1)
    zero3 = zero_stage == 3  # the Trainer builds the model under zero.Init: nothing on the host
    build = HOST_START_MIB * MIB + 4 * P + 4 * VH if built_on_host and not zero3 else 0  # fp32
    # model on the host; BloomForCausalLM makes lm_head's own V x H before tying it
    train = HOST_CUDA_MIB * MIB + host_states(a, c)
    defragment = b * P / world_size if zero3 and not offload_param else 0  # stage3.py, at start
    save = (4 * P if zero_stage is None else b * P) if save_model else 0  # gathered on rank 0
    host_rank0, host_other = max(build, train + max(defragment, save)), max(build, train + defragment)
    return dict(
        gpu_mib=(states + acts + logits + workspace) / MIB, model_states_mib=states / MIB,
        activations_mib=acts / MIB, logits_mib=logits / MIB, workspace_mib=workspace / MIB,
        phase=phase, host_mib=host_rank0 / MIB,
        host_node_mib=(host_rank0 + (ranks_per_node - 1) * host_other) / MIB,
        parameters=P, sequence_length=first)


def predict_run(metrics, model=None, **settings):
    """predict() for the configuration a run_metrics.json records (either schema); settings:
    predict()'s keywords for what the run does not record (they win over what it does)."""
    def offloaded(key):
        return metrics.get(key) not in (None, "none", False)
    recorded = dict(
        world_size=metrics.get("world_size") or 1, nodes=metrics.get("nodes") or 1,
        per_device_train_batch_size=metrics["per_device_train_batch_size"],
        gradient_accumulation_steps=metrics["gradient_accumulation_steps"],
        max_length=metrics["max_length"], precision=metrics.get("precision") or "fp32",
        zero_stage=metrics.get("zero_stage"), offload_optimizer=offloaded("offload_optimizer"),
        offload_param=offloaded("offload_param"),
        gradient_checkpointing=bool(metrics.get("gradient_checkpointing")),
        fast_path=bool(metrics.get("fast_path")), compile_blocks=bool(metrics.get("compile_blocks")),
        pad_to_max_length=metrics.get("pad_to_max_length", True),
        longest=metrics.get("longest_sequence_tokens"),
        pin_memory=metrics.get("pin_memory") is not False,  # the workshop's offload configs pin
        built_on_host="schema_version" not in metrics,  # version 1 built the model on the host
        **{k: metrics[k] for k in ("length_multiple", "save_model") if metrics.get(k) is not None})
    recorded.update({k: v for k, v in settings.items() if v is not None})
    return predict(metrics.get("architecture") or model or metrics["model"], **recorded)


# --- the plan ------------------------------------------------------------------------------

CONFIGS = [  # label, DeepSpeed config, ZeRO stage, offload optimizer, offload parameters
    ("no DeepSpeed", None, None, False, False),
    ("ZeRO-1", "ds_zero1.json", 1, False, False),
    ("ZeRO-2", "ds_zero2.json", 2, False, False),
    ("ZeRO-3", "ds_zero3.json", 3, False, False),
    ("ZeRO-2 + optimizer offload", "ds_zero2_offload.json", 2, True, False),
    ("ZeRO-3 + optimizer and parameter offload", "ds_zero3_offload.json", 3, True, True),
]
# Speed: samples/s against the workshop's configuration (no DeepSpeed, batch 4 x 4, pad 512, no
# checkpointing) of the same model on one GPU, as measured. Keys: "z0".."z3" ZeRO stages, "o"
# with offload, "fast" the fast path with compiled blocks, "fast eager" without, "gc" gradient
# checkpointing, "none" the workshop's.
H200 = "docs/results/h200-2026-12-01/"
SPEED = {
    "bloom-560m": [
        ("docs/results.md, single-GPU stages (H100, fp16 rows)",
         {"z0": 0.91, "z1": 0.90, "z2": 0.44, "z3": 0.19, "z2o": 0.26, "z3o": 0.11}),
        (H200 + "explore (H200, one epoch; the workshop's 56.9 samples/s)",
         {"fast": 5.6, "fast eager": 1.62, "z0 fast": 2.37, "z1 fast": 2.49}),
        ("docs/results.md, Making it fast, call 1 (H100)", {"z2 fast": 1.57, "z2 fast eager": 0.95})],
    "bloom-1b7": [
        ("docs/results.md, larger architectures (H100, bf16, 4 steps)",
         {"z1": 1.05, "z2": 0.72, "z3": 0.28, "z2o": 0.24, "z3o": 0.17}),
        (H200 + "large-models (H200, 3 steps: 27.3 against 40.1 samples/s)", {"gc": 0.68})],
    "bloom-3b": [("docs/results.md, larger architectures (H100, bf16, 4 steps)",
                  {"z1": 1.06, "z2": 0.55, "z3": 0.33, "z2o": 0.21, "z3o": 0.17})],
    "bloom-7b1": [(H200 + "large-models (H200, 3 steps); the workshop's configuration does not "
                   "fit, its speed is taken as checkpointing's 12.0 samples/s / 0.68",
                   {"gc": 0.68, "fast eager": 1.36, "fast eager gc": 1.18, "z3": 0.48})],
}
CHECKPOINTING = {False: (0.68, "bloom-1b7, H200"), True: (0.87, "bloom-7b1's eager fast path, H200")}


def speed_key(stage, offload, fast, compiled, checkpointing):
    words = ([] if stage is None else [f"z{stage}" + "o" * offload]) + (
        ["fast" if compiled else "fast eager"] if fast else []) + ["gc"] * checkpointing
    return " ".join(words) or "none"


def speed(a, key):
    """(samples/s against the workshop's configuration of the same model, or None; source).

    Measured for this size, else the ratio without checkpointing times CHECKPOINTING's, else the
    nearest measured size's (not for the fast path, whose gain depends on the size)."""
    sizes = sorted(SPEED, key=lambda k: abs(BLOOM[k][0] ** 2 * BLOOM[k][1] - a.hidden ** 2 * a.layers))
    same = sizes[0] if BLOOM[sizes[0]] == (a.hidden, a.layers, a.heads) else None
    tries = [(key, 1, "")]
    if key.endswith("gc"):
        factor, where = CHECKPOINTING["fast" in key]
        tries.append((key[:-3] or "none", factor, f"; x{factor} for checkpointing ({where})"))
    for k, factor, extra in tries:
        for size in sizes:
            found = (1.0, "the workshop's configuration") if k == "none" else next(
                ((r[k], source) for source, r in SPEED[size] if k in r), None)
            if found and (size == same or "fast" not in k):
                nearest = "" if size == same or k == "none" else f" ({size}'s, the nearest measured size)"
                return found[0] * factor, found[1] + nearest + extra
    return None, "not measured"


def fits(mib, capacity_mib, gpu=True):
    """"yes", "tight" or "no" (the module docstring says what they mean)."""
    usable = (capacity_mib - CUDA_CONTEXT_MIB) / (1 + FRAGMENTATION) if gpu else capacity_mib
    return "yes" if mib <= MARGIN * usable else "tight" if mib <= usable else "no"


def options(config, args, fast, checkpointing, batch, accumulation, precision, explicit, compiled):
    """The stage folder, DS_CONFIG and train.py flags of a configuration (compiled: whether the
    fast path's blocks are, and whether train.py would compile them on its own)."""
    world = args.gpus_per_node * args.nodes
    label, ds_config, stage = config[:3]
    folder = ("baseline" if stage is None and world == 1 else "deepspeed-single-gpu" if world == 1
              else "deepspeed-multi-gpu" if args.nodes == 1 else "deepspeed-multi-node")
    flags = [f"{folder}/"]
    if world > 1 or stage is not None:
        flags.append(f"DS_CONFIG={ds_config or 'ds_config.json'}")
    if args.nodes > 1 or world > 1:
        flags.append(f"({args.nodes} node{'s' * (args.nodes > 1)} x {args.gpus_per_node} GPUs)")
    if fast:
        flags.append("--fast_path True")
        if compiled[0] != compiled[1]:
            flags.append(f"--compile_blocks {compiled[0]}")
    if precision != ("bf16" if fast else "fp16") or (fast and "precision" in explicit):
        flags.append({"fp16": "--fp16 True", "bf16": "--bf16 True", "fp32": "--fp16 False"}[precision])
    for key, value, default in (("per_device_train_batch_size", batch, 16 if fast else 4),
                                ("gradient_accumulation_steps", accumulation, 1 if fast else 4),
                                ("max_length", args.max_length, 512)):
        if value != default or (fast and key in explicit):
            flags.append(f"--{key} {value}")
    if checkpointing:
        flags.append("--gradient_checkpointing True")
    return " ".join(flags)


def plan(args, explicit):
    """Markdown lines: one row per configuration, then the recommendation."""
    a, workshop = architecture(args.model), _workshop_config()
    world = args.gpus_per_node * args.nodes
    gpu_cap, host_cap = args.gpu_memory_gib * 1024, args.host_memory_gib * 1024
    rows, lines = [], []

    def row(config, fast, checkpointing, eager=False):
        label, _, stage, offload_opt, offload_param = config
        if stage is None and world > 1:
            stage, label = 0, "ZeRO off (DeepSpeed, ds_config.json)"
        # as train.py: the fast path's settings for those not given explicitly (config.py)
        def given(key):
            return getattr(args, key) if key in explicit or not fast else workshop.FAST_PATH[key]
        batch, accumulation = given("per_device_train_batch_size"), given("gradient_accumulation_steps")
        precision = args.precision if "precision" in explicit or not fast else "bf16"
        steps = workshop.TRAINING_DEFAULTS["num_train_epochs"] * -(
            -workshop.WorkshopArguments.train_samples // (batch * accumulation * world))
        default = (fast and workshop.compile_blocks_refusal(stage, accumulation) is None
                   and steps >= workshop.COMPILE_PAYS_FROM_STEPS)  # config.device_defaults
        compiled = default and not eager
        p = predict(a, world_size=world, nodes=args.nodes, per_device_train_batch_size=batch,
                    gradient_accumulation_steps=accumulation, max_length=args.max_length,
                    precision=precision, zero_stage=stage, offload_optimizer=offload_opt,
                    offload_param=offload_param, gradient_checkpointing=checkpointing,
                    fast_path=fast, compile_blocks=compiled, longest=args.longest)
        ratio, note = speed(a, speed_key(stage, offload_opt or offload_param, fast, compiled,
                                         checkpointing))
        name = (f"fast path{' (compiled blocks)' if compiled else ''} + {label}" if fast else label)
        name += ", gradient checkpointing" if checkpointing else ""
        flags = options(config, args, fast, checkpointing, batch, accumulation, precision, explicit,
                        (compiled, default))
        return dict(name=name, options=flags, p=p, gpu=fits(p["gpu_mib"], gpu_cap),
                    host=fits(p["host_node_mib"], host_cap, gpu=False), ratio=ratio, note=note)

    for checkpointing in (False, True):
        rows += [row(config, False, checkpointing) for config in CONFIGS]
    order = {"yes": 0, "tight": 1, "no": 2}
    for checkpointing in (False, True):  # the fast path that fits best, then the fastest measured
        candidates = [row(config, True, checkpointing, eager) for config in CONFIGS
                      for eager in (False, True)]
        rows.append(min(candidates, key=lambda r: (max(order[r["gpu"]], order[r["host"]]),
                                                   r["ratio"] is None, -(r["ratio"] or 0))))
    notes = sorted({r["note"] for r in rows if r["ratio"]})
    lines.append(f"Plan for {a.name}: {a.params / 1e9:.2f}e9 parameters ({a.layers} layers, hidden "
                 f"{a.hidden}, {a.heads} heads, vocabulary {a.vocab:,}), {args.nodes} node(s) x "
                 f"{args.gpus_per_node} GPU(s) of {args.gpu_memory_gib:g} GiB, "
                 f"{args.host_memory_gib:g} GiB host memory per node; sequences of "
                 f"{args.max_length} tokens"
                 + ("" if args.longest is None else f" (longest {args.longest})") + ".")
    lines.append("")
    lines.append("| configuration | options | GPU MiB: model states / activations / logits+loss / "
                 "workspace | peak GPU MiB | host MiB per node | fits GPU | fits host | speed vs "
                 "workshop |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["p"]
        split = " / ".join(f"{p[k]:,.0f}" for k in ("model_states_mib", "activations_mib",
                                                      "logits_mib", "workspace_mib"))
        ratio = f"x{r['ratio']:.2f} [{notes.index(r['note']) + 1}]" if r["ratio"] else "not measured"
        lines.append(f"| {r['name']} | `{r['options']}` | {split} | {p['gpu_mib']:,.0f} "
                     f"({p['phase']}) | {p['host_node_mib']:,.0f} | {r['gpu']} | {r['host']} | "
                     f"{ratio} |")
    lines.append("")
    lines.append(f"Peak GPU MiB predicts torch.cuda.max_memory_allocated() per GPU. Fits GPU: yes "
                 f"= within 90% of the usable memory (the GPU's less {CUDA_CONTEXT_MIB} MiB for "
                 f"CUDA's context, and {FRAGMENTATION:.0%} for fragmentation: an out-of-memory on "
                 f"the H200), tight = within it (may fail), no = above. Host: all ranks of a node.")
    if world > 1:
        lines.append("Speed: samples/s per GPU against the workshop's configuration on one GPU; "
                     "nothing was measured on several GPUs (docs/results.md, Several GPUs).")
    if not args.longest:
        lines.append("Without padding (the fast path) the largest batch is taken at --max_length "
                     "tokens; --longest N gives the longest sequence of your data.")
    for i, note in enumerate(notes, 1):
        lines.append(f"[{i}] {note}")
    good = [r for r in rows if r["gpu"] == r["host"] == "yes"]
    lines.append("")
    if good:
        best = max(good, key=lambda r: (r["ratio"] or 0, -r["p"]["gpu_mib"]))
        p = best["p"]
        lines.append(f"Recommended: {best['name']} (`{best['options']}`): the fastest "
                     f"({'x%.2f' % best['ratio'] if best['ratio'] else 'speed not measured'}) "
                     f"of the configurations that fit both the GPU ({p['gpu_mib']:,.0f} MiB, "
                     f"{gpu_cap:,.0f} in all) and the host ({p['host_node_mib']:,.0f} of "
                     f"{host_cap:,.0f} MiB) with 10% to spare.")
        if world == 1 and p["host_node_mib"] > MARGIN * 32 * 1024:  # the one-GPU jobs' --mem
            lines.append(f"The one-GPU jobs ask SLURM for 32 GiB of host memory (#SBATCH "
                         f"--mem=32G): submit with sbatch --mem="
                         f"{math.ceil(p['host_node_mib'] / 1024 / MARGIN)}G.")
    else:
        lines.append("Recommended: none fits GPU and host with 10% to spare: add GPUs "
                     "(--gpus_per_node, --nodes), lower --per_device_train_batch_size or "
                     "--max_length, or use a GPU or host with more memory.")
    return lines


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        sys.exit(f"error: {message} (python tools/plan.py --help)")


def main(argv=None):
    parser = OneLineParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("model", help="bloom-560m, bloom-1b7, bloom-3b, bloom-7b1, a folder with "
                        "config.json, or a hub id")
    parser.add_argument("--gpus_per_node", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpu_memory_gib", type=float, default=80, help="per GPU, as torch "
                        "reports it (the total capacity of an out-of-memory message; H200: 139.8)")
    parser.add_argument("--host_memory_gib", type=float, default=128,
                        help="per node (default: the multi-GPU jobs' #SBATCH --mem=128G)")
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--longest", type=int, help="tokens of the longest training sequence "
                        "(sets the largest batch without padding; default: --max_length)")
    parser.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    explicit = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    for name, minimum in (("gpus_per_node", 1), ("nodes", 1), ("per_device_train_batch_size", 1),
                          ("gradient_accumulation_steps", 1), ("max_length", 2), ("longest", 1)):
        if getattr(args, name) is not None and getattr(args, name) < minimum:
            sys.exit(f"error: --{name} {getattr(args, name)}: give a whole number, at least {minimum}")
    for name in ("gpu_memory_gib", "host_memory_gib"):
        if not getattr(args, name) > 0:
            sys.exit(f"error: --{name} {getattr(args, name):g}: give the memory in GiB, above 0")
    try:
        architecture(args.model)  # errors in MODEL: one line, no traceback
    except (OSError, ValueError) as e:
        sys.exit(f"error: MODEL {e}")
    print("\n".join(plan(args, explicit)))


if __name__ == "__main__":
    main()
