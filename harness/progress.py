"""Progress bars for long work: live on a terminal, a line every 30 s in batch-job logs."""
import sys

from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 30.0)
    return tqdm(iterable, **kwargs)
