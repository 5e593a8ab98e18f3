"""The one exception type a user sees: its message is a complete, one-line explanation."""


class SimattrError(Exception):
    """A user-facing error: bad config, bad or stale input file. The CLI prints it as one line."""
