"""What a run was made from: code version, packages, device, data, and how to re-run it."""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("ssl-harness", "torch", "torchvision", "numpy", "mlflow", "scikit-learn", "scikit-image")


def git_state(path: Path | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the repository holding the harness code; ('unknown', False) outside git."""
    path = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return "unknown", False
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", False


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it, with family/model/stepping where the name is generic
    (cloud CPUs often report just "AMD EPYC")."""
    try:
        fields = {}
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += (f" (family {fields['cpu family']} model {fields.get('model', '?')}"
                 f" stepping {fields.get('stepping', '?')})")
    return name


def device_description(device: torch.device) -> str:
    """The device, precisely enough to tell whether two runs took the same floating-point path:
    the same seed is bit-identical only on the same CPU kernels (torch picks AVX2 or AVX-512 at
    run time) and thread count; across them, small differences grow over training."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return (f"cpu:{platform.machine()}:{cpu_model()}:{torch.backends.cpu.get_cpu_capability()}:"
            f"{torch.get_num_threads()} threads")


def code_dir() -> str:
    """Where the harness code of this process was imported from (a Slurm job runs the code
    snapshot taken at submission)."""
    import harness

    return str(Path(harness.__file__).resolve().parent.parent)


def slurm_job_id() -> str:
    return os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" \
        or os.environ.get("SLURM_JOB_ID", "")


def rerun_command(args: list[str]) -> str:
    return shlex.join(["harness", *args])
