"""One exception type for every problem a user can fix, and one warning type for notes.

The CLI prints ``error: <message>`` on one line and exits 2 for these; anything else is a bug and
keeps its traceback. ``Note`` is how the Python API says what it assumed (``warnings.warn``, so a
note is shown once per place in the user's code and can be filtered like any warning); the CLI
prints it as one ``note: <message>`` line.
"""


class MinivisionError(Exception):
    """A user-facing problem: bad input, missing data, wrong flag. The message is one line."""


class DataError(MinivisionError):
    """A dataset file or folder that is missing, corrupt or malformed. Name the file in the message."""


class TrainingFailed(MinivisionError):
    """Training stopped because it cannot succeed (the loss became NaN or exploded); the message says
    why and what to change. The run folder is marked failed (``progress.json``: state ``failed``)."""


class Note(UserWarning):
    """A one-line note for the user: what the Python API assumed about its input, an empty picture."""
