"""Wall time of the demo's `harness run --method cpc_v2 --eval all` on the embedded suite.

Runs in a fresh temporary directory (fresh MLflow store, data cache kept) and reports the
results it printed, the machine, the suite's content hash and a fresh generation's wall time.
Targets: the demo at most 5 minutes on a 2-core CPU, the generation at most 60 s.
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_info  # noqa: E402
from harness.metrics import Declaration  # noqa: E402
from harness.rundir import RunFolder  # noqa: E402

HARNESS = Path(sys.executable).with_name("harness")


def generation_seconds(code: str = "from harness import registry; from harness.data.base import DEFAULT_SUITE; "
                                  "registry.suites.get(DEFAULT_SUITE)().prepare()") -> float:
    """Wall time of generating the default suite (or what ``code`` makes) from nothing, in its own process."""
    with tempfile.TemporaryDirectory() as home:
        t0 = time.time()
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "SSL_HARNESS_DATA": home}, check=True)
        return time.time() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        r = subprocess.run([str(HARNESS), "run", "--method", "cpc_v2", "--eval", "all", "--output-dir", "demo"],
                           cwd=tmp, capture_output=True, text=True)
        wall = time.time() - t0
        if r.returncode != 0:
            sys.exit(f"run failed:\n{r.stderr[-3000:]}")
        saved = RunFolder(Path(tmp) / "demo").results()
        res = saved["results"]
    from harness import registry
    from harness.data.base import DEFAULT_SUITE

    print(f"machine: {machine_info()}")
    # With the machine, the data's hash tells whether a different number came from the data.
    suite = registry.suites.get(DEFAULT_SUITE)(root=None, image_size=32)
    print(f"{DEFAULT_SUITE} suite content hash: {suite.content_hash()[:16]}")
    print(f"{DEFAULT_SUITE} generation: {generation_seconds():.0f} s (fresh, in a temporary data folder)")
    scenes = generation_seconds("from harness.data.scenes import GlyphScenes; GlyphScenes().prepare()")
    print(f"{DEFAULT_SUITE} detection scenes (VOC + COCO layouts): {scenes:.0f} s (fresh, made on the first detection eval)")
    corrupted = generation_seconds(
        "import tempfile; from harness.data.glyphs import GlyphsSuite; "
        "from harness.data.corruptions import ALL_CORRUPTIONS, corrupted_sets; "
        "corrupted_sets(GlyphsSuite(), ALL_CORRUPTIONS, images_per_class=GlyphsSuite.profile['eval.robustness.images_per_class'], "
        "resize_ratio=1.0, out=tempfile.mkdtemp(), make=True, log=lambda *a: None)")
    print(f"{DEFAULT_SUITE} corrupted sets (19 x 5 of 200 val images): {corrupted:.0f} s (fresh, includes the "
          f"suite's own generation in that folder; made on the first robustness eval)")
    print(f"harness run --method cpc_v2 --eval all: {wall:.0f} s wall")
    for name, m in res.items():
        print(f"  {name}: {Declaration.from_dict(saved['declarations'][name]).summary(m)}")


if __name__ == "__main__":
    main()
