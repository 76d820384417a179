"""BLOOM's sizes, and a model's architecture counted without its weights (on PyTorch's meta
device): what tools/plan.py, tools/tables.py and tools/bloom_architecture.py share."""
from dataclasses import dataclass, replace
from pathlib import Path

from workshop.squad import is_local_path

BLOOM = {  # the bigscience/bloom-* configs on the hub: hidden size, layers, heads
    "bloom-560m": (1024, 24, 16),
    "bloom-1b7": (2048, 24, 16),
    "bloom-3b": (2560, 30, 32),
    "bloom-7b1": (4096, 30, 32),
}
BLOOM_VOCABULARY = 250_880  # every size's


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

    @property
    def params(self):
        return sum(self.sizes)

    @property
    def largest(self):
        """Elements of the largest parameter (DeepSpeed's ZeRO-3 estimator asks for it)."""
        return max(self.sizes)


def bloom_config(size, **extra):
    """The transformers config of a BLOOM size ("bloom-560m", ...)."""
    from transformers import BloomConfig
    hidden, layers, heads = BLOOM[size]
    return BloomConfig(vocab_size=BLOOM_VOCABULARY, hidden_size=hidden, n_layer=layers, n_head=heads,
                       **extra)


def config_of(model):
    """(transformers config, name) of a BLOOM size, a folder with config.json, a hub id (this
    machine's cache first, then the hub), a config, or a dict of config keys (run_metrics.json's
    architecture; BLOOM's without model_type). ValueError in one line where there is none."""
    from transformers import AutoConfig, logging
    logging.set_verbosity_error()
    if isinstance(model, dict):
        keys = {k: v for k, v in model.items() if v is not None}
        name = "architecture " + ", ".join(f"{k} {v}" for k, v in keys.items())
        return AutoConfig.for_model(keys.pop("model_type", "bloom"), **keys), name
    if not isinstance(model, (str, Path)):
        return model, getattr(model, "name_or_path", "") or type(model).__name__
    name = str(model)
    if name in BLOOM:
        return bloom_config(name), name
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ValueError(f"{name} has no config.json: give a model folder (e.g. prepared/model)")
        return AutoConfig.from_pretrained(folder), name
    if is_local_path(name):
        raise ValueError(f"model folder {name} does not exist")
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True), name
    except (OSError, ValueError):
        pass
    try:
        return AutoConfig.from_pretrained(name), name
    except (OSError, ValueError) as e:
        raise ValueError(f"{name} is not cached here and the hub cannot be reached "
                         f"({type(e).__name__}): give one of {', '.join(BLOOM)}, a folder with "
                         f"config.json, or run where the hub is reachable") from None


_BUILT = {}  # config as JSON -> Arch: each architecture is built once per process


def architecture(model):
    """Arch of anything config_of() takes (or an Arch), the model built on the meta device."""
    if isinstance(model, Arch):
        return model
    config, name = config_of(model)
    key = config.to_json_string()
    if key not in _BUILT:
        import torch
        from transformers import AutoModelForCausalLM
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(config)
        params = list(built.parameters())  # tied weights (embedding = lm_head) once
        _BUILT[key] = Arch(name, config.model_type, getattr(config, "vocab_size", 0),
                           getattr(config, "hidden_size", 0), getattr(config, "n_layer", 0),
                           getattr(config, "n_head", 0), tuple(p.numel() for p in params),
                           sum(p.numel() for p in params if p.dim() >= 2))
    return replace(_BUILT[key], name=name)
