"""A DeepSpeed JSON config, read once into what the rest of the run asks of it."""
import json
from dataclasses import dataclass, field
from pathlib import Path

ZERO_STAGES = (0, 1, 2, 3)


@dataclass(frozen=True)
class DeepSpeedFile:
    """The DeepSpeed JSON file a run names, as read: what the run asks of it (DeepSpeed's own
    config class checks it whole: workshop/checks.py)."""
    path: str | None = None  # None: no DeepSpeed
    raw: dict = field(default_factory=dict)

    @property
    def zero(self):
        return self.raw.get("zero_optimization") or {}

    @property
    def stage(self):
        """ZeRO stage, None without DeepSpeed."""
        return self.zero.get("stage", 0) if self.path else None

    def offload_section(self, what):
        """zero_optimization's offload_`what` ("optimizer" or "param"), {} where absent."""
        return self.zero.get(f"offload_{what}") or {}

    def offload(self, what):
        """Where `what` ("optimizer" or "param") is offloaded to ("cpu", "nvme"), else None."""
        device = self.offload_section(what).get("device")
        return None if device in (None, "none") else device

    @property
    def pin_memory(self):
        return self.offload_section("optimizer").get("pin_memory") if self.offload("optimizer") else None


def read_deepspeed_config(path):
    """The config at `path` (none for None), refused in one line when it is missing, not JSON,
    or names an unknown ZeRO stage."""
    if not path:
        return DeepSpeedFile()
    if not Path(path).is_file():
        raise ValueError(f"--deepspeed {path}: no such file (the stage folder has ds_zero1.json, "
                         f"ds_zero2.json, ds_zero3.json, ...)")
    try:
        raw = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"DeepSpeed config {path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"DeepSpeed config {path} holds no JSON object")
    zero = raw.get("zero_optimization")
    sections = {"zero_optimization": zero}  # the accessors below read into these
    if isinstance(zero, dict):
        sections.update({f"zero_optimization.{name}": zero.get(name) for name in ("offload_optimizer", "offload_param")})
    for name, section in sections.items():
        if section is not None and not isinstance(section, dict):
            raise ValueError(f"DeepSpeed config {path}: {name} is {json.dumps(section)}, not an object "
                             f"{{...}}: write it as the stage's ds_zero*.json do")
    config = DeepSpeedFile(str(path), raw)
    if isinstance(config.stage, bool) or config.stage not in ZERO_STAGES:  # true == 1 in Python
        raise ValueError(f"DeepSpeed config {path}: zero_optimization.stage is {config.stage!r}; "
                         f"ZeRO stages are {', '.join(map(str, ZERO_STAGES))}")
    return config
