"""The one exception type the CLI turns into a clear one-line message and a non-zero exit."""


class AttnsaeError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""
