"""Peak GPU and host memory of a training run, from the model's architecture alone (no GPU, no
weights): tools/plan.py prints it for every configuration, tools/tables.py beside each run.

    predict(model, *, world_size=1, nodes=1, per_device_train_batch_size=4,
            gradient_accumulation_steps=4, max_length=512, precision="fp16", zero_stage=None,
            offload_optimizer=False, offload_param=False, gradient_checkpointing=False,
            fast_path=False, compile_blocks=False, pad_to_max_length=None, longest=None,
            later_longest=None, length_multiple=None, pin_memory=True, save_model=True,
            built_on_host=False) -> dict
        model: anything workshop.models.architecture() takes (a named size, a folder with
          config.json, a hub id, a config, a dict of config keys) or its result: any causal LM
          that transformers builds.
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
        (all ranks of one node together); parameters, sequence_length.
    predict_run(run_metrics, model=None, **settings) -> predict()'s dict for the configuration
        a run_metrics.json records (model: its architecture, where the run does not record it;
        settings: predict()'s keywords for what it does not record, e.g. later_longest).
    fits(mib, capacity_mib, gpu=True) -> "yes", "tight" or "no" (below).
Each raises ValueError with a one-line reason for a model it cannot read.

Any model but BLOOM: the model states, DeepSpeed's buffers, the workspace and the host memory
as below; the activations, autocast's weight copies, the logits and the loss, and the gradients
the backward makes, from one micro-batch of the model's own code replayed on fake tensors
(workshop/step_trace.py: the Trainer's autocast, gradient checkpointing, the fast path's loss).
The step peaks during the forward and backward, at the end of the backward or in the optimizer
step. Compiled blocks are replayed eagerly: inductor keeps fewer activations, so the plan is an
upper bound there (phase "... (compiled: at most)"). tests/test_plan.py checks this replay
against every committed run of another family, and against BLOOM's runs as if BLOOM were any
model.

BLOOM (bytes; P parameters, b = 2 for fp16/bf16 or 4 for fp32, N GPUs, T = batch x sequence
tokens per micro-batch, V x H the tied embedding / lm_head weight): each term is counted from
how its code allocates; tests/test_plan.py replays BLOOM's code on fake tensors to check the
activation and loss terms, and compares every committed GPU run. The peak is the largest of
five moments of a step:
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
Host, per rank: Python, torch and CUDA (host_trainer_mib; the fast path and DeepSpeed's engine
add theirs), offloaded optimizer states, ZeRO-3's 16-bit partition copied through the host once
(DeepSpeed's zero/utils.py defragment), and the weights it saves (rank 0; every rank under
ZeRO-0/1/2); built_on_host: the fp32 model built before CUDA starts (host_start_mib).
Fits: the GPU's memory as torch reports it, less cuda_context_mib and fragmentation (both from
the bloom-7b1 out-of-memory on the H200) is usable: "yes" = the peak within 90% of it (room for
the prediction's error), "tight" = within it (may still fail), "no" = above. Host: the same
against the host's memory.
Fitted (plan_data.json beside this file, each with the runs it comes from): the GPU workspace,
a rank's host memory before and after CUDA starts (without and with DeepSpeed and the fast
path), CUDA's context and fragmentation; nothing else.
Not DeepSpeed's estimators: they count fp32 gradients that live only in the optimizer step, and
a 1.5 buffer factor on the host. Not measured, so less sure: more than two GPUs, several nodes
(ZeRO-3's gathered weights), compiled blocks beyond bloom-560m, real weights (random ones ran).
Evaluation and generation need less than training.
"""
import json
import math
from pathlib import Path

from workshop.models import architecture
from workshop.step_trace import traced_step

DATA = json.loads((Path(__file__).with_name("plan_data.json")).read_text())
FITTED = {name: entry["value"] for name, entry in DATA["fitted"].items()}
MIB = 2**20
WORKSPACE_MIB = FITTED["workspace_mib"]
HOST_START_MIB = FITTED["host_start_mib"]
HOST_TRAINER_MIB = FITTED["host_trainer_mib"]
HOST_FAST_PATH_MIB = FITTED["host_fast_path_mib"]
HOST_DEEPSPEED_MIB = FITTED["host_deepspeed_mib"]
CUDA_CONTEXT_MIB = FITTED["cuda_context_mib"]
FRAGMENTATION = FITTED["fragmentation"]
# DeepSpeed settings the workshop's configs leave at DeepSpeed's defaults (zero/config.py).
ZERO1_BUCKET = 5e8  # reduce_bucket_size: ds_zero1.json does not set it (ds_zero2/3: "auto", hidden^2)
MAX_LIVE_PARAMETERS = 1e9  # stage3_max_live_parameters: gathered ZeRO-3 weights kept for reuse
SUB_GROUP_SIZE = 1e9  # ZeRO-3 steps its optimizer this many parameters at a time
LOSS_CHUNK = 1024  # positions per chunk of the fast path's loss: enable_fast_path's chunk_size
# (workshop/fast_path.py imports transformers' BLOOM; tests/test_plan.py checks they agree)
MARGIN = 0.9  # "yes": the prediction within 90% of the usable memory


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
        if not a.is_bloom:
            return traced_moments(L, missing)
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

    def traced_moments(L, missing):
        """moments() of any other causal LM: its forward, loss and backward replayed on fake
        tensors (workshop/step_trace.py), over the model states counted as for BLOOM. The
        gradients the states hold during the step (accumulation, DeepSpeed) exist in the replay
        before it starts; the others are counted as the backward makes them."""
        t = traced_step(a.config, B, L, weights="amp" if amp else "fp32" if b == 4 else "16bit",
                        gradient_checkpointing=gradient_checkpointing, fast_path=fast_path,
                        gradients_exist=zero_stage is not None or gradient_accumulation_steps > 1)
        transient = t.peak - t.gradients_at_peak  # at the peak: what the step made, but gradients
        logits = max(transient - t.activations, 0)  # a late peak holds part of the activations
        if c["compile_blocks"]:  # the compiled loss keeps the 16-bit logits (loss_bytes)
            logits = max(logits, loss_bytes(a, B * L, B * (L - 1), b, fast_path, True)[1])
        fb, full = s["fb"] - missing, s["full"] - missing
        embedding = grad_bytes * VH if a.tied or gradient_accumulation_steps > 1 else 0  # its
        # dense gradient before it is added to the one there (tied: the output layer's)
        during = "forward and backward" + (" (compiled: at most)" if c["compile_blocks"] else "")
        return {
            during: (fb + t.gradients_at_peak, transient - logits, logits, bucket_fb),
            "end of backward": (full + embedding + second, 0, 0, bucket_bwd),
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
    build = HOST_START_MIB * MIB + 4 * P + 4 * VH * a.tied if built_on_host and not zero3 else 0  # fp32
    # model on the host; BloomForCausalLM makes lm_head's own V x H before tying it
    base = HOST_TRAINER_MIB + HOST_FAST_PATH_MIB * fast_path + HOST_DEEPSPEED_MIB * (zero_stage is not None)
    train = base * MIB + host_states(a, c)
    defragment = b * P / world_size if zero3 and not offload_param else 0  # stage3.py, at start
    # Saving: the Trainer writes the fp32 weights from rank 0; ZeRO-3 gathers the 16-bit ones on
    # rank 0; ZeRO-0/1/2 copy the state dict to the host on every rank (accelerate's
    # get_state_dict), tied weights once per name: the V x H embedding twice.
    save = (4 * P if zero_stage is None else b * P if zero3 else b * (P + VH * a.tied)) if save_model else 0
    save_other = save if save_model and zero_stage is not None and not zero3 else 0
    # ZeRO-3 defragments its partition through the host as its engine starts, before the
    # engine's own host memory (HOST_DEEPSPEED_MIB) is there
    at_engine_start = train - HOST_DEEPSPEED_MIB * MIB * (zero_stage is not None) + defragment
    host_rank0 = max(build, train + save, at_engine_start)
    host_other = max(build, train + save_other, at_engine_start)
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


def fits(mib, capacity_mib, gpu=True):
    """"yes", "tight" or "no" (the module docstring says what they mean)."""
    usable = (capacity_mib - CUDA_CONTEXT_MIB) / (1 + FRAGMENTATION) if gpu else capacity_mib
    return "yes" if mib <= MARGIN * usable else "tight" if mib <= usable else "no"




SIDECARS = ("architectures.json", "unrecorded.json")  # beside committed results (docs/results)


def unrecorded(run_dir, metrics):
    """predict_run()'s model and settings for what a run does not record itself, from the
    nearest architectures.json or unrecorded.json above its folder (each file's note says what
    it holds); keys by the run folder's path below the sidecar's, the longest prefix first."""
    run_dir = Path(run_dir).resolve()
    folder, side = next(((f, json.loads((f / name).read_text())) for f in run_dir.parents
                         for name in SIDECARS if (f / name).is_file()), (None, {}))
    key = str(run_dir.relative_to(folder)) if folder else ""

    def by_prefix(table, default=None):
        return next((v for k, v in (table or {}).items() if key.startswith(k)), default)
    batches = by_prefix(side.get("batch_longest_tokens"))
    step = metrics.get("global_step") or 0
    return dict(
        model=metrics.get("architecture") or side.get("models", {}).get(metrics.get("model")),
        longest=metrics.get("longest_sequence_tokens", side.get("longest_sequence_tokens")),
        pin_memory=metrics.get("pin_memory", side.get("pin_memory", {}).get(metrics.get("deepspeed_config"), True)),
        save_model=by_prefix(side.get("save_model"), metrics.get("save_model", True)),
        length_multiple=by_prefix(side.get("length_multiple"), metrics.get("length_multiple")),
        # the longest batch after the first step (group_by_length puts the longest first)
        later_longest=max(batches[1:step]) if batches and metrics.get("fast_path") and step > 1 else None)
