"""The RESULTS table from one or more bench/sweep.py JSON-line files: per method, kNN and
linear top-1 (mean over seeds), wall time, and whether it beats its random initialisation
(the same method at train.epochs=0, else the `random` baseline) and `pixels` on kNN.

    python bench/screen_table.py bench/out/glyphs_screen.jsonl
"""
import json
import statistics
import sys
from collections import defaultdict


def main() -> None:
    rows = [json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip()]
    runs = defaultdict(list)
    for r in rows:
        if "error" in r:
            print(f"failed: {r['run']}: {r['error']}")
            continue
        untrained = r["overrides"].get("train.epochs") == 0 and r["method"] not in ("random", "pixels")
        runs[(r["method"], "init" if untrained else "trained")].append(r)

    def mean(key, rs):
        return statistics.mean(x[key] for x in rs)

    floor = {k: mean("knn", runs[(k, "trained")]) for k in ("random", "pixels") if runs.get((k, "trained"))}
    def per_seed(key, rs):
        # The mean, then each seed's value: the spread says how far to trust a gap.
        return f"{mean(key, rs):.1f}" + (f" ({' / '.join(f'{x[key]:.1f}' for x in rs)})" if len(rs) > 1 else "")

    print("| method | kNN top-1 | linear top-1 | seeds | wall per run (each seed) | random init kNN | beats random init and pixels (kNN) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (method, kind), rs in sorted(runs.items(), key=lambda kv: -mean("knn", kv[1])):
        if kind != "trained":
            continue
        init = runs.get((method, "init"))
        init_knn = mean("knn", init) if init else floor.get("random")
        knn = mean("knn", rs)
        beats = "—" if method in ("random", "pixels", "supervised") or init_knn is None or "pixels" not in floor else \
            ("yes" if knn > init_knn and knn > floor["pixels"] else "no")
        init_txt = "—" if init_knn is None else f"{init_knn:.1f}" + ("" if init else " (random)")
        rs = sorted(rs, key=lambda x: x["overrides"].get("seed", 0))
        walls = " / ".join("%.0f" % x["wall_s"] for x in rs)
        print(f"| {method} | {per_seed('knn', rs)} | {per_seed('linear', rs)} | {len(rs)} | {walls} s | "
              f"{init_txt} | {beats} |")


if __name__ == "__main__":
    main()
