"""Machine description recorded next to every benchmark number."""
import os
import platform

import torch

from harness.provenance import cpu_model


def machine_info() -> str:
    # The kernel set matters for comparing numbers, not only speed: the same seed follows a
    # different floating-point path on AVX2 and AVX-512 machines.
    cpu = f"{cpu_model()}, torch CPU kernels {torch.backends.cpu.get_cpu_capability()}"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, GPU: {gpu}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}")
