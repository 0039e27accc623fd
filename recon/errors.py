"""Errors that the CLI turns into one-line messages.

``ReconError`` is a user error (bad input, missing file, unusable views): the CLI prints its message
and exits with code 2. Anything else is an internal error (exit 1).
"""


class ReconError(Exception):
    """A problem with the user's input that they can fix; the message is one actionable line."""
