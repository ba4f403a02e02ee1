"""Installing a plugin package into the project's venv for the length of a test."""
import contextlib
import subprocess
import sys
from pathlib import Path

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


@contextlib.contextmanager
def installed(root: Path, dist: str):
    """``pip install -e root`` (no deps, no build isolation: the venv has them), uninstalled
    afterwards whatever happens, so no other test sees the plugin."""
    done = subprocess.run([*PIP, "install", "--no-deps", "--no-build-isolation", "-e", str(root)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    try:
        yield
    finally:
        subprocess.run([*PIP, "uninstall", "-y", dist], capture_output=True, timeout=300)
        for info in Path(root).glob("*.egg-info"):
            subprocess.run(["rm", "-rf", str(info)], timeout=60)


def harness(*args, cwd, env, timeout=900):
    return subprocess.run([str(Path(sys.executable).with_name("harness")), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def pytest_in(root: Path, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
