"""Where a run keeps what torch.compile and DeepSpeed's op builder compile, between jobs: one
folder per Python environment (environments sharing one folder rebuild each other's ops every
job). Nothing happens on import; the run sets the folders for its time (compile_caches)."""
import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path

from workshop.build_ops import environment_tools

VARIABLES = (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TORCH_EXTENSIONS_DIR", "torch_extensions"))


def environment_key():
    """The compile caches' folder name for this Python environment."""
    return f"{Path(sys.prefix).name}-{hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]}"


def use_compile_caches():
    """Point torch.compile and DeepSpeed's op builder at this environment's folders.

    COMPILE_CACHE (the .slurm jobs set it; CLUSTER: shared storage) holds them; an explicit
    TORCHINDUCTOR_CACHE_DIR or TORCH_EXTENSIONS_DIR wins. A folder that cannot be written is a
    warning, and this job compiles into a temporary folder instead."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    base = Path(os.environ.get("COMPILE_CACHE", Path.home() / ".cache" / "bloom-workshop"))
    for variable, name in VARIABLES:
        explicit = os.environ.get(variable)
        if explicit == os.path.abspath(default_cache_dir()):  # torch's own, set as it imports
            explicit = None
        folder = Path(explicit or base / environment_key() / name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            print(f"warning: compile cache {folder} is not writable ({e.strerror}): this job "
                  f"compiles without it (set COMPILE_CACHE to a writable folder)", file=sys.stderr)
            folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        os.environ[variable] = str(folder)


@contextlib.contextmanager
def compile_caches():
    """The run's compile caches and build tools (this environment's ninja first on PATH), set
    for the run and as they were after it."""
    names = [variable for variable, _ in VARIABLES] + ["PATH"]
    before = {name: os.environ.get(name) for name in names}
    try:
        use_compile_caches()
        environment_tools()
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
