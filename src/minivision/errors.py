"""One exception type for every problem a user can fix.

The CLI prints ``error: <message>`` on one line and exits 2 for these; anything else is a bug and
keeps its traceback.
"""


class MinivisionError(Exception):
    """A user-facing problem: bad input, missing data, wrong flag. The message is one line."""


class DataError(MinivisionError):
    """A dataset file or folder that is missing, corrupt or malformed. Name the file in the message."""
