"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UsageError(Exception):
    """Bad input from the user (unknown name, missing data, malformed override).

    The message must name what is wrong and what is expected, on one line.
    """
