"""Wall time of the demo's `harness run --method cpc_v2 --eval all` on the embedded suite.

Runs in a fresh temporary directory (fresh MLflow store, data cache kept) and reports the
time of each stage from the run's own log. Target (issue 2): at most 10 minutes on a
2-core CPU, aim for 5.
"""
import json
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
    from harness.data.digits import DigitsSuite

    print(f"machine: {machine_info()}")
    # With the machine, the data's hash tells whether a different number came from the data.
    print(f"digits suite content hash: {DigitsSuite(root=None, image_size=32).content_hash()[:16]}")
    print(f"harness run --method cpc_v2 --eval all: {wall:.0f} s wall")
    for name, m in res.items():
        print(f"  {name}: {Declaration.from_json(json.dumps(saved['declarations'][name])).summary(m)}")


if __name__ == "__main__":
    main()
