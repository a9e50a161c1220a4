"""The one exception type for failures the user can fix.

The CLI prints a `UserError` as a single line on stderr and exits with code 2, no traceback.
The message names what the user controls: the file, the node, the flag, the board.
"""


class UserError(Exception):
    """A bad model, flag, input, artifact, tuning log or board, described in one line."""
