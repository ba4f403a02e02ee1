"""Do the learning-signal tests catch broken methods? Runs the short runs of
tests/test_learning_signal.py as they are, and with known breakages patched in:

- simclr, positives shuffled: each anchor's positive is another image's view;
- byol, target takes gradients: the targets come from the online network, no stop-gradient
  (the collapse the paper's stop-gradient prevents).

Prints, for the correct and the broken run, what the tests check (simclr: kNN top-1 against
the random initialisation; byol: the last epoch's loss against the collapsed value); a useful
test passes on the correct one and fails on the broken one.

    python bench/mutation_check.py [simclr byol]
"""
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tests.test_learning_signal import COLLAPSED_LOSS, MARGIN, RUNS, _extra, _run  # noqa: E402


def shuffled_positives():
    import methods.simclr as simclr

    original = simclr.nt_xent_distributed
    simclr.nt_xent_distributed = lambda z1, z2, t: original(z1, z2[torch.randperm(len(z2))], t)
    return lambda: setattr(simclr, "nt_xent_distributed", original)


def target_takes_gradients():
    from methods.byol import BYOL, byol_loss

    original = BYOL.training_step

    def broken(self, batch):
        (x1, x2), _ = batch
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        return {"loss": byol_loss(self.predictor(z1), z2) + byol_loss(self.predictor(z2), z1)}

    BYOL.training_step = broken
    return lambda: setattr(BYOL, "training_step", original)


MUTATIONS = {"simclr": shuffled_positives, "byol": target_takes_gradients}


def check(method: str, out: Path) -> tuple[bool, str]:
    """(test passes, what it measured) for one run, as tests/test_learning_signal.py checks it."""
    epochs = RUNS[method]["train.epochs"]
    knn, losses = _run(method, epochs, out, _extra(method))
    if method == "simclr":
        init, _ = _run(method, 0, out.with_name(out.name + "-init"), _extra(method))
        return knn > init + MARGIN, f"kNN {knn:.1f} vs random init {init:.1f}"
    last = statistics.mean(losses[-len(losses) // epochs:])
    return last > COLLAPSED_LOSS, f"last-epoch loss {last:.4f}, kNN {knn:.1f}"


def main() -> None:
    for method in sys.argv[1:] or sorted(RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            ok, what = check(method, Path(tmp) / "good")
            undo = MUTATIONS[method]()
            try:
                caught_not, bad = check(method, Path(tmp) / "bad")
            finally:
                undo()
        print(f"{method}: correct: {what} (test {'passes' if ok else 'FAILS'}); broken: {bad} "
              f"(test {'passes: NOT caught' if caught_not else 'fails: caught'})", flush=True)


if __name__ == "__main__":
    main()
