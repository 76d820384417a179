"""Named model sizes, and a model's architecture counted without its weights (on PyTorch's meta
device): what tools/plan.py, tools/tables.py and tools/architecture.py share. Any causal LM that
transformers builds from a config.json is an architecture here; the named sizes are for machines
without the hub (random weights: speed and memory are real, losses are not)."""
from dataclasses import dataclass, field, replace
from pathlib import Path

from workshop.squad import is_local_path

BLOOM = {  # the bigscience/bloom-* configs on the hub: hidden size, layers, heads
    "bloom-560m": (1024, 24, 16),
    "bloom-1b7": (2048, 24, 16),
    "bloom-3b": (2560, 30, 32),
    "bloom-7b1": (4096, 30, 32),
}
BLOOM_VOCABULARY = 250_880  # every size's

# Other families' shapes, written from their config.json on the hub (the model cards' links).
# The hub id is what tools/prepare.py fetches for the real weights.
NAMED = {
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B", dict(
        model_type="llama", vocab_size=128_256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        max_position_embeddings=131_072, rms_norm_eps=1e-5, rope_theta=500_000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        tie_word_embeddings=True)),
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B", dict(
        model_type="qwen2", vocab_size=151_936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        max_position_embeddings=32_768, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        tie_word_embeddings=True)),
    "qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B", dict(
        model_type="qwen2", vocab_size=151_936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        max_position_embeddings=131_072, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        tie_word_embeddings=True)),
    "qwen3-0.6b": ("Qwen/Qwen3-0.6B", dict(
        model_type="qwen3", vocab_size=151_936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=40_960, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        tie_word_embeddings=True)),
    "mistral-7b": ("mistralai/Mistral-7B-v0.1", dict(
        model_type="mistral", vocab_size=32_000, hidden_size=4096, intermediate_size=14_336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        max_position_embeddings=32_768, rms_norm_eps=1e-5, rope_theta=10_000.0,
        sliding_window=4096, tie_word_embeddings=False)),
    "gemma-2-2b": ("google/gemma-2-2b", dict(
        model_type="gemma2", vocab_size=256_000, hidden_size=2304, intermediate_size=9216,
        num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10_000.0,
        query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True)),
    "phi-3-mini": ("microsoft/Phi-3-mini-4k-instruct", dict(
        model_type="phi3", vocab_size=32_064, hidden_size=3072, intermediate_size=8192,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10_000.0,
        sliding_window=2047, pad_token_id=32_000, tie_word_embeddings=False)),
    "smollm2-360m": ("HuggingFaceTB/SmolLM2-360M", dict(
        model_type="llama", vocab_size=49_152, hidden_size=960, intermediate_size=2560,
        num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100_000.0,
        tie_word_embeddings=True)),
}


NAMES = [*BLOOM, *NAMED]


@dataclass(frozen=True)
class Arch:
    name: str
    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    sizes: tuple  # elements of each parameter (tied weights once)
    matrices: int  # elements of the 2-D parameters (the Trainer's weight-decay group)
    tied: bool = True  # the output projection is the input embedding
    config: object = field(default=None, compare=False, repr=False)  # transformers' config

    @property
    def params(self):
        return sum(self.sizes)

    @property
    def largest(self):
        """Elements of the largest parameter (DeepSpeed's ZeRO-3 estimator asks for it)."""
        return max(self.sizes)

    @property
    def is_bloom(self):
        return self.model_type == "bloom"


def bloom_config(size, **extra):
    """The transformers config of a BLOOM size ("bloom-560m", ...)."""
    from transformers import BloomConfig
    hidden, layers, heads = BLOOM[size]
    return BloomConfig(vocab_size=BLOOM_VOCABULARY, hidden_size=hidden, n_layer=layers, n_head=heads,
                       **extra)


def named_config(name, **extra):
    """The transformers config of a named size (BLOOM's or NAMED's), case as you like."""
    from transformers import AutoConfig
    key = name.lower()
    if key in BLOOM:
        return bloom_config(key, **extra)
    keys = dict(NAMED[key][1], **extra)
    return AutoConfig.for_model(keys.pop("model_type"), **keys)


def hub_id(name):
    """The hub id of a named size, else the name itself (a folder, a hub id)."""
    key = str(name).lower()
    if Path(name).expanduser().is_dir() or key not in NAMES:
        return str(name)
    return f"bigscience/{key}" if key in BLOOM else NAMED[key][0]


def config_of(model):
    """(transformers config, name) of a named size (NAMES), a folder with config.json, a hub id
    (this machine's cache first, then the hub), a config, or a dict of config keys
    (run_metrics.json's architecture; BLOOM's without model_type). ValueError in one line
    where there is none."""
    from transformers import AutoConfig
    if isinstance(model, dict):
        keys = {k: v for k, v in model.items() if v is not None}
        name = keys.pop("name_or_path", None) or "architecture " + ", ".join(
            f"{k} {v}" for k, v in keys.items() if not isinstance(v, (dict, list)))
        try:
            return AutoConfig.for_model(keys.pop("model_type", "bloom"), **keys), name
        except ValueError as e:
            raise ValueError(f"{name}: {str(e).splitlines()[0]}") from None
    if not isinstance(model, (str, Path)):
        return model, getattr(model, "name_or_path", "") or type(model).__name__
    name = str(model)
    if name.lower() in NAMES:
        return named_config(name), name
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ValueError(f"{name} has no config.json: give a model folder (e.g. prepared/model)")
        return _read_config(folder, name), name
    if is_local_path(name):
        raise ValueError(f"model folder {name} does not exist")
    for local_files_only in (True, False):
        try:
            return _read_config(name, name, local_files_only=local_files_only), name
        except OSError as e:
            error = e
    raise ValueError(f"{name} is not cached here and the hub cannot be reached "
                     f"({type(error).__name__}): give one of {', '.join(NAMES)}, a folder with "
                     f"config.json, or run where the hub is reachable") from None


def _read_config(where, name, **kwargs):
    """AutoConfig of a folder or hub id; a config.json transformers cannot read is one line."""
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(where, **kwargs)
    except ValueError as e:  # an unknown model_type, a key of the wrong kind
        raise ValueError(f"{name}: transformers cannot build a config from its config.json "
                         f"({str(e).splitlines()[0][:200]})") from None


_BUILT = {}  # config as JSON -> Arch: each architecture is built once per process


def architecture(model):
    """Arch of anything config_of() takes (or an Arch), the model built on the meta device.
    A config that AutoModelForCausalLM cannot build is refused in one line naming why."""
    if isinstance(model, Arch):
        return model
    config, name = config_of(model)
    key = config.to_json_string()
    if key not in _BUILT:
        import torch
        try:
            with torch.device("meta"):
                built = build(config)
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            raise ValueError(f"{name} ({config.model_type}) is not a causal language model "
                             f"transformers can build ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else 'no message'})") from None
        params = list(built.parameters())  # tied weights (embedding = lm_head) once
        output = built.get_output_embeddings()
        tied = output is None or output.weight is built.get_input_embeddings().weight
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
                   if not isinstance(getattr(config, k, None), int)]
        if missing:
            raise ValueError(f"{name}: its config has no {', '.join(missing)}: the plan needs them")
        _BUILT[key] = Arch(name, config.model_type, config.vocab_size, config.hidden_size,
                           config.num_hidden_layers, config.num_attention_heads,
                           tuple(p.numel() for p in params),
                           sum(p.numel() for p in params if p.dim() >= 2), tied, config)
    return replace(_BUILT[key], name=name)


# What tells one model's architecture from another's (a checkpoint's must match), by
# transformers' common names (BLOOM's n_layer and n_head answer to them too).
ARCHITECTURE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "intermediate_size", "head_dim")
BLOOM_KEYS = ("model_type", "vocab_size", "hidden_size", "n_layer", "n_head")  # schema 2's


def build(config, **kwargs):
    """AutoModelForCausalLM.from_config, never partitioned: a run under ZeRO-3 (the Trainer's
    DeepSpeed config) would have transformers build it inside zero.Init; a model counted or
    replayed is built whole (transformers' own mark of a model already inside zero.Init)."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_utils import set_zero3_state
    with set_zero3_state():
        return AutoModelForCausalLM.from_config(config, **kwargs)


def describe(config):
    """The keys that rebuild a model's architecture (run_metrics.json's architecture): BLOOM's
    five, else its config without what does not change the architecture."""
    if config.model_type == "bloom":
        return {k: getattr(config, k, None) for k in BLOOM_KEYS}
    keys = config.to_diff_dict()
    for noise in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
                  "use_cache"):
        keys.pop(noise, None)
    return {"model_type": config.model_type, **keys}


def same_architecture(config, other):
    """The ARCHITECTURE_KEYS where two configs differ, as 'key=theirs/ours' strings."""
    return [f"{k}={getattr(config, k, None)}/{getattr(other, k, None)}" for k in ARCHITECTURE_KEYS
            if getattr(config, k, None) != getattr(other, k, None)]
