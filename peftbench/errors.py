"""The one exception type for errors a user can cause and fix."""


class PeftbenchError(Exception):
    """A user-fixable error: the message says what is wrong and how to fix it.

    The CLI prints it on one line and exits with status 2 (tracebacks only with ``--debug``).
    """
