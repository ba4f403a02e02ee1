"""Preemption and time limits: Slurm's warning signal, acted on at a step boundary.

Slurm sends USR2 ``signal_delay_s`` seconds before it kills a job that is timing out or being
preempted; submitit's handler then checkpoints the job callable and requeues the job. A
Python signal handler runs between two bytecodes, anywhere inside a training step (half the
parameters updated, say), so saving the trainer from inside it could write a state no
uninterrupted run ever had. Instead, while a trainer is running, the signal only raises a
flag; the trainer finishes the step it is in, writes its checkpoint, and then hands over to
the wrapped handler (submitit's requeue-and-exit). Outside training (an eval) the wrapped
handler runs at once: an eval is cheap to redo and is redone from the start.
"""
from __future__ import annotations

import contextlib
import signal

_state = {"training": False, "pending": None}


def defer(signum: int = signal.SIGUSR2) -> bool:
    """Wrap the handler currently installed for ``signum``. False when there is none to wrap
    (an in-process run: the signal keeps its default action)."""
    original = signal.getsignal(signum)
    if not callable(original):
        return False

    def handler(sig, frame):
        if _state["training"]:
            _state["pending"] = (original, sig)
        else:
            original(sig, frame)

    signal.signal(signum, handler)
    return True


@contextlib.contextmanager
def training():
    _state["training"] = True
    try:
        yield
    finally:
        _state["training"] = False


def pending() -> bool:
    return _state["pending"] is not None


def request(sig: int = signal.SIGUSR2) -> None:
    """Raise the flag without a signal handler to hand over to (tests, and a stop asked for
    by code)."""
    _state["pending"] = (None, sig)


def proceed() -> None:
    """Called by the trainer once its checkpoint is written: run the wrapped handler, which
    for submitit requeues the job and exits the process. Without one, stop the process
    cleanly: the next run of the same command resumes from the checkpoint."""
    handler, sig = _state["pending"]
    _state["pending"] = None
    if handler is not None:
        handler(sig, None)
    raise SystemExit(f"stopped by signal {signal.Signals(sig).name} after checkpointing; re-run to resume")
