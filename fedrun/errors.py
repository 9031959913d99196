"""User-facing errors: one sentence that says what to change, printed without a traceback."""


class FedrunError(Exception):
    """A problem with the user's input or environment that the user can fix.

    The message is shown as is (``fedrun: error: <message>``), so it must be one clear
    sentence that names the setting and says what to change.
    """


class DivergenceError(FedrunError):
    """Training produced a non-finite or exploding loss or update."""
