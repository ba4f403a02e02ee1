"""User-facing errors: the CLI prints them as one line and exits with code 2 (bad input) or
1 (a run or job that failed)."""


class UsageError(Exception):
    """Bad input from the user (unknown name, missing data, malformed override).

    The message must name what is wrong and what is expected, on one line.
    """


class RunFailed(Exception):
    """A launched job failed or ended without a result: the run's failure, not the input's, so
    the CLI exits with code 1. The message names the job and its log."""


class RunsFailed(RunFailed):
    """Some runs of a sweep or study failed after every other run finished. The CLI prints
    the one-line summary and exits with code 1."""

    def __init__(self, failed: list[tuple[str, str]], total: int, what: str = "sweep", prepared=None):
        self.failed, self.total, self.prepared = failed, total, prepared
        first_dir, first_err = failed[0]
        super().__init__(f"{len(failed)} of {total} runs of the {what} failed, the others finished "
                         f"(first: {first_dir}: {first_err}); re-run the same command to retry them "
                         f"(finished runs are reused)")
