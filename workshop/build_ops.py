"""Build DeepSpeed's C++ ops that this machine's runs load, once, into the compile cache of this
Python environment (workshop.run.use_compile_caches), so that no job or test builds one:

    python -m workshop.build_ops        # make setup runs it

Without a GPU: the shared-memory collective that DeepSpeed's CPU accelerator loads at start
and CPU Adam (optimizer offload). With a GPU: CPU Adam. Each is a minute or two on 2 cores."""
import os
import sys
import time


def main():
    from workshop.run import use_compile_caches
    use_compile_caches()
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator
    names = ["CPUAdamBuilder"] + (["ShareMemCommBuilder"] if get_accelerator().device_name() == "cpu" else [])
    for name in names:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not builder.is_compatible():
            print(f"{name}: not for this machine, skipped")
            continue
        start = time.time()
        print(f"building DeepSpeed's {builder.NAME} into {os.environ['TORCH_EXTENSIONS_DIR']} "
              f"(a minute or two, once) ...", flush=True)
        builder.load(verbose=False)
        print(f"{builder.NAME}: ready ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
