"""The exceptions tvmbits raises for failures the user can fix.

Each is a `ValueError` whose message is one line naming what the user controls: the file, the
node, the flag, the board. The library raises them; the CLI prints the message on stderr and
exits with code 2, no traceback. Catch `UserError` for all of them.
"""


class UserError(ValueError):
    """A bad model, option, input, artifact, tuning log, target or board, described in one line.

    `detail` holds what a tool said at length (e.g. TVM's importer), shown by `--verbose`."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail


class ModelError(UserError):
    """The model file: missing, not ONNX, an unsupported op, a malformed quantizer."""


class OptionError(UserError):
    """A compile/run/tune option: a bit width, a kernel name, a shape, a timeout."""


class TargetError(UserError):
    """A target profile that does not exist or does not parse, or a build that cannot link."""


class ArtifactError(UserError):
    """A compiled artifact that is missing, corrupt, or cannot be written where asked."""


class InputError(UserError):
    """Inputs to a compiled model: wrong names, shapes, dtypes or files."""


class BoardError(UserError):
    """A board or tracker: unreachable, dropped mid-run, no free board, or the wrong machine."""


class TuningLogError(UserError):
    """A tuning log folder that cannot be read or written."""
