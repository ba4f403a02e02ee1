"""Build detectron2 (not on PyPI) into the project's venv, once per machine.

    python tools/build_detectron2.py SRC

SRC is a source folder, a source archive (.tar.gz / .zip, e.g. a `git archive` snapshot), or
anything pip can build (``git+https://github.com/facebookresearch/detectron2.git``). The build
always runs with ``--no-build-isolation``: detectron2's setup.py imports torch, and an isolated
build env has none ("No module named 'torch'", the most reported install failure). The wheel is
kept in ``<data home>/wheels/`` under a key of the source's sha256, the torch version and the
Python tag, so a second `make detectron2` (or a fresh clone's `make test`) installs it in
seconds instead of compiling again.

Written by hand because pip has no cache for locally built wheels of local sources (its wheel
cache skips folders and archives).
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fail(message: str) -> None:
    print(f"make detectron2: {message}", file=sys.stderr)
    raise SystemExit(2)


def source_key(src: str) -> str:
    """sha256 of an archive's bytes, of a folder's files, or of a pip URL's text (a git URL
    names no commit here, so it is rebuilt only when the text changes)."""
    path = Path(src)
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    elif path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file() and ".git" not in q.parts and "build" not in q.parts):
            h.update(p.relative_to(path).as_posix().encode() + b"\0" + p.read_bytes())
    else:
        h.update(src.encode())
    return h.hexdigest()[:16]


def unpack(archive: Path, into: Path) -> Path:
    """The folder holding setup.py inside ``archive`` (archives from `git archive --prefix`
    have one top folder)."""
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(into, filter="data")
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(into)
    else:
        fail(f"DETECTRON2_SRC={archive} is neither a folder, a .tar.gz/.zip archive, nor a pip URL")
    found = sorted(into.rglob("setup.py"), key=lambda p: len(p.parts))
    if not found:
        fail(f"DETECTRON2_SRC={archive} has no setup.py: expected a detectron2 source tree")
    return found[0].parent


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0]:
        fail("expected one argument: a detectron2 source folder, archive or pip URL (DETECTRON2_SRC)")
    import torch

    from harness.data.base import data_home

    src = argv[0]
    key = f"{source_key(src)}-torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}"
    cache = data_home() / "wheels" / f"detectron2-{key}"
    wheels = sorted(cache.glob("detectron2-*.whl"))
    if not wheels:
        print(f"[detectron2] building from {src} (--no-build-isolation; a few minutes on 2 cores)")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(src)
            target = str(unpack(path, Path(tmp)) if path.is_file() else src)
            out = Path(tmp) / "wheel"
            pip("wheel", "--quiet", "--no-build-isolation", "--no-deps", "--wheel-dir", str(out), target)
            cache.mkdir(parents=True, exist_ok=True)
            for w in out.glob("detectron2-*.whl"):
                w.replace(cache / w.name)
        wheels = sorted(cache.glob("detectron2-*.whl"))
        if not wheels:
            fail(f"the build of {src} made no detectron2 wheel")
    else:
        print(f"[detectron2] using the wheel built before: {wheels[-1]}")
    # Its Python dependencies come from PyPI, pinned by the project's constraints.
    pip("install", "--quiet", "-c", str(ROOT / "constraints.txt"), "--force-reinstall", "--no-deps", str(wheels[-1]))
    pip("install", "--quiet", "-c", str(ROOT / "constraints.txt"), str(wheels[-1]))
    subprocess.run([sys.executable, "-c", "import detectron2, detectron2._C; print('[detectron2]', detectron2.__version__, 'installed')"],
                   check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
