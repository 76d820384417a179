"""Choose a configuration before you submit: predicted peak GPU and host memory of every
configuration train.py can run, from the model's architecture alone (no GPU, no weights), the
fastest one that fits with 10% to spare, and the commands that run it.

    python tools/plan.py bloom-7b1 --gpu H100-80GB --gpus_per_node 4
    python tools/plan.py llama-3.2-1b --gpu H200 --host_memory_gib 125
    python tools/plan.py prepared/model --gpu A100-40GB

MODEL is any causal LM that transformers builds from a config.json: a folder with config.json,
a hub id (its config is read from the local cache, else the hub), or a named size
(workshop/models.py: BLOOM's, Llama 3.2, Qwen 2.5 and 3, Mistral, Gemma 2, Phi-3, SmolLM2). One
Markdown row per configuration (no DeepSpeed, ZeRO-1/2/3, offload; each with and without gradient
checkpointing; the fast path, compiled as train.py would compile it or not), then the
recommendation and its sbatch line (tools/prepare.py first for a model not prepared yet).
The memory model is workshop/memory_plan.py (its docstring says how each term is counted);
the measured speeds and the fitted constants are in workshop/plan_data.json, each with the
runs under docs/results it comes from.
"""
import argparse
import math
import re
import sys
from dataclasses import astuple, replace
from pathlib import Path

import pandas as pd

from workshop.memory_plan import CUDA_CONTEXT_MIB, DATA, FRAGMENTATION, MARGIN, fits, predict
from workshop.models import NAMES, architecture, hub_id
from workshop.settings import FAST_PATH, compiling_pays, precision_of, workshop_defaults

ROOT = Path(__file__).resolve().parents[1]
WORKSHOP = workshop_defaults()  # the baseline's config.py: what a run trains with unless told
WORKSHOP_PRECISION, FAST_PRECISION = precision_of(WORKSHOP), precision_of(FAST_PATH)
CONFIGS = [  # label, DeepSpeed config, ZeRO stage, offload optimizer, offload parameters
    ("no DeepSpeed", None, None, False, False),
    ("ZeRO-1", "ds_zero1.json", 1, False, False),
    ("ZeRO-2", "ds_zero2.json", 2, False, False),
    ("ZeRO-3", "ds_zero3.json", 3, False, False),
    ("ZeRO-2 + optimizer offload", "ds_zero2_offload.json", 2, True, False),
    ("ZeRO-3 + optimizer and parameter offload", "ds_zero3_offload.json", 3, True, True),
]
# A card's memory as torch reports it (total_memory, an out-of-memory message's "total
# capacity"), GiB. The H200's was read in docs/results/h200-2026-12-01 (139.80 GiB of nvidia-smi's
# 143,771 MiB); the others are nvidia-smi's memory.total less the same 0.6 GiB.
CARDS = {"V100-16GB": 15.2, "V100-32GB": 31.1, "A100-40GB": 39.4, "L40S-48GB": 44.4,
         "A100-80GB": 79.4, "H100-80GB": 79.0, "H200-141GB": 139.8}


def marketed(name):
    """A card's marketed size in GB: 'A100-40GB' -> 40."""
    return int(re.search(r"(\d+)GB$", name)[1])


# What CUDA's context and driver keep of a card's memory: nvidia-smi's memory.total less what
# torch reports, the same 0.6 GiB on each card above.
RESERVED_GIB = 0.6


def card(text):
    """(card, GiB as torch reports it) of --gpu: a name (H200, A100-40GB, a100_40gb) or a
    marketed size (40GB, 80G); several cards of that size: the smallest; a size no card above
    has (24GB): a card of that many decimal gigabytes, the least such a card has.
    ValueError otherwise."""
    key = re.sub(r"[^0-9A-Z]", "", text.upper()).replace("GIB", "GB")
    key = key + "B" if key.endswith("G") else key
    found = [n for n in CARDS if key in (n.replace("-", ""), n.split("-")[0])]
    if len(found) > 1:
        raise ValueError(f"--gpu {text}: {' or '.join(found)}?")
    size = re.fullmatch(r"(\d+)(GB)?", key)
    if not found and size:
        found = [n for n in CARDS if marketed(n) == int(size[1])]
        if not found and int(size[1]) > 0:
            return f"a {int(size[1])} GB card", round(int(size[1]) * 1e9 / 2**30 - RESERVED_GIB, 1)
    if not found:
        raise ValueError(f"--gpu {text}: give one of {', '.join(CARDS)}, a marketed size such as "
                         f"24GB, or --gpu_memory_gib as torch reports it")
    return min(((n, CARDS[n]) for n in found), key=lambda c: c[1])


def gpu_memory(args):
    """(GiB, how it was read): --gpu_memory_gib as given, unless it is a card's marketed size
    (40 is a 40 GB card's 39.4 GiB: the advice must not depend on which of the two was typed)."""
    if args.gpu_memory_gib is None:
        name, gib = card(args.gpu)
        return gib, f"{name}'s {gib:g} GiB as torch reports it (--gpu {args.gpu})"
    near = [n for n in CARDS if abs(marketed(n) - args.gpu_memory_gib) < 0.5 < marketed(n) - CARDS[n]]
    if near:
        name, gib = min(((n, CARDS[n]) for n in near), key=lambda c: c[1])
        return gib, (f"{gib:g} GiB as torch reports it: --gpu_memory_gib {args.gpu_memory_gib:g} "
                     f"read as a {marketed(name)} GB card's ({name})")
    return args.gpu_memory_gib, f"{args.gpu_memory_gib:g} GiB (--gpu_memory_gib)"


# --- speed ---------------------------------------------------------------------------------

def speed_key(stage, offload, fast, compiled, checkpointing):
    """plan_data.json's key of a configuration: 'z2o fast eager gc'."""
    words = ([] if stage is None else [f"z{stage}" + "o" * offload]) + (
        ["fast" if compiled else "fast eager"] if fast else []) + ["gc"] * checkpointing
    return " ".join(words) or "none"


def measured(size, key):
    """(ratio, source) measured for this size and key, or None."""
    if key == "none":
        return 1.0, "the workshop's configuration"
    return next(((e["ratios"][key], f"{e['source']} ({e['what']})") for e in DATA["speed"].get(size, [])
                 if key in e["ratios"]), None)


def speed(a, key, world, nodes):
    """(samples/s per GPU against the workshop's configuration of the same model on one GPU,
    source, whether measured as such): measured for this size, else an estimate from the
    nearest measured size, from its parts (ZeRO stage x fast path), x plan_data's factor for
    checkpointing, x the two-GPU efficiency where measured; more GPUs or nodes: estimates."""
    # the measured sizes, nearest first by hidden^2 x layers (what a step's work grows with)
    work = {s: architecture(s).hidden ** 2 * architecture(s).layers for s in DATA["speed"]}
    sizes = sorted(work, key=lambda s: abs(work[s] - a.hidden ** 2 * a.layers))
    same = next((s for s in sizes if same_architecture(architecture(s), a)), None)
    plain, factor, extra = key, 1.0, []
    exact = measured(same, key) if same or key == "none" else None
    if not exact and key.endswith("gc"):
        plain = key[:-3] or "none"
        gc = DATA["checkpointing"]["fast" if "fast" in key else "plain"]
        factor, extra = gc["factor"], [f"x{gc['factor']} for checkpointing ({gc['what']})"]
    found = exact or next((measured(s, plain) for s in sizes if measured(s, plain)), None)
    if not exact and found and not measured(same, plain):
        extra.insert(0, "the nearest measured size's")
    if not found:  # no size measured this combination: its parts
        zero, fast = plain.split(" ", 1) if " " in plain and plain.startswith("z") else (plain, None)
        parts = [next((measured(s, k) for s in sizes if measured(s, k)), None) for k in (zero, fast) if k]
        if not all(parts):
            return None, "not measured", False
        found = (math.prod(p[0] for p in parts), " and ".join(p[1] for p in parts))
        extra.insert(0, f"{' x '.join(k for k in (zero, fast) if k)} measured apart")
    ratio, source = found[0] * factor, found[1]
    efficiency = DATA["two_gpus"]["efficiency"].get(plain) if world == 2 and nodes == 1 else None
    if efficiency:
        ratio *= efficiency
        extra.append(f"x{efficiency} per GPU at two GPUs ({DATA['two_gpus']['source']})")
    elif world > 1:
        extra.append(f"one GPU's: {world} GPUs{f' on {nodes} nodes' if nodes > 1 else ''} not measured")
    sure = bool(exact) and (world == 1 or bool(efficiency))
    return ratio, source + ("; " + "; ".join(extra) if extra else ""), sure


# --- the configurations --------------------------------------------------------------------

def stage_folder(stage, world, nodes):
    return ("baseline" if stage is None and world == 1 else "deepspeed-single-gpu" if world == 1
            else "deepspeed-multi-gpu" if nodes == 1 else "deepspeed-multi-node")


def train_options(args, fast, checkpointing, batch, accumulation, precision, explicit, compiled):
    """train.py's options of a configuration beyond the stage's defaults (compiled: whether the
    fast path's blocks are, and whether train.py would compile them on its own)."""
    flags = []
    if fast:
        flags.append("--fast_path True")
        if compiled[0] != compiled[1]:
            flags.append(f"--compile_blocks {compiled[0]}")
    if precision != (FAST_PRECISION if fast else WORKSHOP_PRECISION) or (fast and "precision" in explicit):
        flags.append({"fp16": "--fp16 True", "bf16": "--bf16 True", "fp32": "--fp16 False"}[precision])
    for key, value in (("per_device_train_batch_size", batch), ("gradient_accumulation_steps", accumulation)):
        default = FAST_PATH[key] if fast else WORKSHOP[key]
        if value != default or (fast and key in explicit):
            flags.append(f"--{key} {value}")
    if args.max_length != WORKSHOP["max_length"]:
        flags.append(f"--max_length {args.max_length}")
    if checkpointing:
        flags.append("--gradient_checkpointing True")
    return flags


def configurations(args, explicit, a, gpu_cap, host_cap):
    """One dict per row: name, stage folder, DS_CONFIG, train.py options, prediction, fits, speed."""
    world = args.gpus_per_node * args.nodes

    def row(config, fast, checkpointing, eager=False):
        label, ds_config, stage, offload_opt, offload_param = config
        if stage is None and world > 1:
            stage, ds_config, label = 0, "ds_config.json", "ZeRO off (DeepSpeed's engine)"
        # as train.py: the fast path's settings for those not given explicitly (FAST_PATH)
        def given(key):
            return getattr(args, key) if key in explicit or not fast else FAST_PATH[key]
        batch, accumulation = given("per_device_train_batch_size"), given("gradient_accumulation_steps")
        precision = args.precision if "precision" in explicit or not fast else FAST_PRECISION
        default = fast and compiling_pays(stage, batch, accumulation, WORKSHOP["train_samples"],
                                          WORKSHOP["num_train_epochs"], ranks=world)
        compiled = default and not eager
        p = predict(a, world_size=world, nodes=args.nodes, per_device_train_batch_size=batch,
                    gradient_accumulation_steps=accumulation, max_length=args.max_length,
                    precision=precision, zero_stage=stage, offload_optimizer=offload_opt,
                    offload_param=offload_param, gradient_checkpointing=checkpointing,
                    fast_path=fast, compile_blocks=compiled, longest=args.longest)
        ratio, source, sure = speed(a, speed_key(stage, offload_opt or offload_param, fast, compiled,
                                                 checkpointing), world, args.nodes)
        name = (f"fast path{' (compiled blocks)' if compiled else ''} + {label}" if fast else label)
        name += ", gradient checkpointing" if checkpointing else ""
        return dict(name=name, folder=stage_folder(stage, world, args.nodes), ds_config=ds_config,
                    options=train_options(args, fast, checkpointing, batch, accumulation, precision,
                                          explicit, (compiled, default)),
                    p=p, gpu=fits(p["gpu_mib"], gpu_cap), host=fits(p["host_node_mib"], host_cap, gpu=False),
                    ratio=ratio, source=source, sure=sure)

    rows = [row(config, False, checkpointing) for checkpointing in (False, True) for config in CONFIGS]
    order = {"yes": 0, "tight": 1, "no": 2}
    for checkpointing in (False, True):  # the fast path that fits best, then the fastest
        candidates = [row(config, True, checkpointing, eager) for config in CONFIGS for eager in (False, True)]
        rows.append(min(candidates, key=lambda r: (max(order[r["gpu"]], order[r["host"]]),
                                                   r["ratio"] is None, -(r["ratio"] or 0))))
    return rows


def short(r):
    """How a row runs, in one cell: stage folder, DS_CONFIG, train.py's options."""
    return " ".join([f"{r['folder']}/"] + ([f"DS_CONFIG={r['ds_config']}"] if r["ds_config"] else []) + r["options"])


def table(rows, sources):
    """The rows as a Markdown table (pandas)."""
    def speed_cell(r):
        if r["ratio"] is None:
            return "not measured"
        said = f"x{r['ratio']:.2f}" if r["sure"] else f"~x{r['ratio']:.2f} (estimate)"
        return f"{said} [{sources.index(r['source']) + 1}]"
    df = pd.DataFrame([{
        "configuration": r["name"], "how": f"`{short(r)}`",
        "GPU MiB: model states / activations / logits+loss / workspace": " / ".join(
            f"{r['p'][k]:,.0f}" for k in ("model_states_mib", "activations_mib", "logits_mib", "workspace_mib")),
        "peak GPU MiB": f"{r['p']['gpu_mib']:,.0f} ({r['p']['phase']})",
        "host MiB per node": f"{r['p']['host_node_mib']:,.0f}", "fits GPU": r["gpu"], "fits host": r["host"],
        "speed per GPU vs workshop": speed_cell(r)} for r in rows])
    return df.to_markdown(index=False)


def sbatch_defaults(folder):
    """The job script's own #SBATCH nodes, GPUs per node and memory (GiB)."""
    text = (ROOT / folder / f"{folder}.slurm").read_text()
    value = lambda pattern: int(m[1]) if (m := re.search(pattern, text, re.M)) else None  # noqa: E731
    return value(r"^#SBATCH --nodes=(\d+)"), value(r"^#SBATCH --gres=gpu:(\d+)"), value(r"^#SBATCH --mem=(\d+)G")


def same_architecture(a, b):
    return astuple(replace(a, name="")) == astuple(replace(b, name=""))


def same_model(folder, a):
    """Whether a prepared model folder holds this architecture."""
    try:
        return same_architecture(architecture(folder), a)
    except (OSError, ValueError):
        return False


def commands(best, args, a):
    """The lines that run the recommendation: tools/prepare.py where the model is not prepared
    yet, then sbatch from the repository root."""
    lines, env, options = [], [], list(best["options"])
    if Path(args.model).expanduser().is_dir():  # paths are relative to the stage folder: absolute
        options.insert(0, f"--model_name_or_path {Path(args.model).expanduser().resolve()}")
    else:
        hub = hub_id(args.model)
        default, own = ROOT / "prepared", ROOT / f"prepared-{hub.split('/')[-1]}"
        prepared = next((f for f in (default, own) if same_model(f / "model", a)), None)
        if prepared is None:  # prepared/ unless it holds another model
            prepared = own if default.exists() else default
            lines.append(f"python tools/prepare.py --model_name_or_path {hub}"
                         + (f" --prepared_dir {own.name}" if prepared == own else "")
                         + "   # once, where the hub is reachable (the login node)")
        if prepared != default:
            env.append(f"PREPARED=../{prepared.name}")
    nodes, gpus, mem = sbatch_defaults(best["folder"])
    flags = [f"--nodes={args.nodes}"] * (nodes != args.nodes) + [f"--gres=gpu:{args.gpus_per_node}"] * (
        gpus != args.gpus_per_node)
    need = best["p"]["host_node_mib"] / 1024 / MARGIN
    if mem and need > mem:
        flags.append(f"--mem={math.ceil(need)}G")
    if best["ds_config"]:
        env.append(f"DS_CONFIG={best['ds_config']}")
    lines.append(" ".join(env + ["sbatch"] + flags + [f"{best['folder']}/{best['folder']}.slurm"] + options))
    return lines


def plan(args, explicit):
    """Markdown lines: one row per configuration, then the recommendation and how to run it."""
    a = architecture(args.model)
    world = args.gpus_per_node * args.nodes
    gpu_gib, gpu_said = gpu_memory(args)
    gpu_cap, host_cap = gpu_gib * 1024, args.host_memory_gib * 1024
    rows = configurations(args, explicit, a, gpu_cap, host_cap)
    sources = sorted({r["source"] for r in rows if r["ratio"] is not None})
    lines = [f"Plan for {a.name}: {a.params / 1e9:.2f}e9 parameters ({a.layers} layers, hidden {a.hidden}, "
             f"{a.heads} heads, vocabulary {a.vocab:,}); {args.nodes} node(s) x {args.gpus_per_node} "
             f"GPU(s) of {gpu_said}; {args.host_memory_gib:g} GiB host memory per node; sequences of "
             f"{args.max_length} tokens" + ("" if args.longest is None else f" (longest {args.longest})") + ".",
             "", table(rows, sources), "",
             f"Peak GPU MiB predicts torch.cuda.max_memory_allocated() per GPU. Fits GPU: yes = within "
             f"90% of the usable memory (the GPU's less {CUDA_CONTEXT_MIB} MiB for CUDA's context, and "
             f"{FRAGMENTATION:.0%} for fragmentation: an out-of-memory on the H200), tight = within it "
             f"(may fail), no = above. Host: all ranks of one node, against one node's memory."]
    if world > 1:
        two = DATA["two_gpus"]
        lines.append(f"Several GPUs: the speed is per GPU. Two GPUs of one node were measured ({two['what']}, "
                     f"{two['source']}): " + ", ".join(f"{k} x{v}" for k, v in two["efficiency"].items())
                     + "; more GPUs are estimates from one GPU's figures.")
    if args.nodes > 1:
        lines.append("Several nodes: nothing was measured across real nodes. The nodes exchange gradients "
                     "(ZeRO-3: weights too, every step) over the network, far slower than NVLink "
                     "inside a node: expect less than these estimates, ZeRO-3 least.")
    if not args.longest:
        lines.append("Without padding (the fast path) the largest batch is taken at --max_length "
                     "tokens; --longest N gives the longest sequence of your data.")
    lines += [f"[{i}] {source}" for i, source in enumerate(sources, 1)]
    good = [r for r in rows if r["gpu"] == r["host"] == "yes"]
    lines.append("")
    if not good:
        return lines + ["Recommended: none fits GPU and host with 10% to spare: add GPUs "
                        "(--gpus_per_node, --nodes), lower --per_device_train_batch_size or "
                        "--max_length, or use a GPU or host with more memory."]
    best = max(good, key=lambda r: (r["ratio"] or 0, r["sure"], -r["p"]["gpu_mib"]))
    p = best["p"]
    said = ("speed not measured" if best["ratio"] is None else f"x{best['ratio']:.2f}, measured"
            if best["sure"] else f"~x{best['ratio']:.2f}, an estimate")
    lines.append(f"Recommended: {best['name']}: the fastest ({said}) of the configurations that fit both "
                 f"the GPU ({p['gpu_mib']:,.0f} MiB of {gpu_cap:,.0f}) and the host ({p['host_node_mib']:,.0f} "
                 f"of {host_cap:,.0f} MiB per node) with 10% to spare. From the repository root:")
    lines += ["", *(f"    {line}" for line in commands(best, args, a))]
    return lines


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the description's lines and shows every default."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        sys.exit(f"error: {message} (python tools/plan.py --help)")


def main(argv=None):
    parser = OneLineParser(description=__doc__, formatter_class=Formatter, allow_abbrev=False)
    parser.add_argument("model", help=f"a folder with config.json, a hub id, or one of {', '.join(NAMES)}")
    parser.add_argument("--gpu", default="H100-80GB", help=f"the card: {', '.join(CARDS)}, or its "
                        f"marketed size (24GB: a card of 24 decimal GB, less CUDA's share)")
    parser.add_argument("--gpu_memory_gib", type=float, help="per GPU, as torch reports it (an "
                        "out-of-memory message's total capacity), instead of --gpu")
    parser.add_argument("--gpus_per_node", type=int, default=1, help="GPUs of each node, one rank each")
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the job")
    parser.add_argument("--host_memory_gib", type=float, default=128,
                        help="per node (the multi-GPU jobs' #SBATCH --mem=128G)")
    parser.add_argument("--per_device_train_batch_size", type=int,
                        default=WORKSHOP["per_device_train_batch_size"],
                        help="sequences per GPU and micro-batch (the fast path's own unless given)")
    parser.add_argument("--gradient_accumulation_steps", type=int,
                        default=WORKSHOP["gradient_accumulation_steps"],
                        help="micro-batches per optimizer step (the fast path's own unless given)")
    parser.add_argument("--max_length", type=int, default=WORKSHOP["max_length"],
                        help="tokens per sequence, as train.py's --max_length")
    parser.add_argument("--longest", type=int, help="tokens of the longest training sequence "
                        "(sets the largest batch without padding; unset: --max_length)")
    parser.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default=WORKSHOP_PRECISION,
                        help=f"the workshop's (the fast path: {FAST_PRECISION} unless given)")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    explicit = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    for name, minimum in (("gpus_per_node", 1), ("nodes", 1), ("per_device_train_batch_size", 1),
                          ("gradient_accumulation_steps", 1), ("max_length", 2), ("longest", 1)):
        if getattr(args, name) is not None and getattr(args, name) < minimum:
            sys.exit(f"error: --{name} {getattr(args, name)}: give a whole number, at least {minimum}")
    for name in ("gpu_memory_gib", "host_memory_gib"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            sys.exit(f"error: --{name} {getattr(args, name):g}: give the memory in GiB, above 0")
    try:
        gpu_memory(args)
        architecture(args.model)  # errors in MODEL: one line, no traceback
    except ValueError as e:
        sys.exit(f"error: {e}" if str(e).startswith("--gpu") else f"error: MODEL {e}")
    except OSError as e:
        sys.exit(f"error: MODEL {e}")
    print("\n".join(plan(args, explicit)))


if __name__ == "__main__":
    main()
