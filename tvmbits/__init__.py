"""tvmbits: compile binarized and low-bit networks to bit-serial and sub-byte kernels.

    import tvmbits
    artifact = tvmbits.compile("model.onnx", target="x86_64")    # or an onnx.ModelProto
    artifact.save("model.tar")
    model = tvmbits.load(artifact)                                # or "model.tar", remote=...
    outputs = model(input=x)
    model.benchmark(repeat=20), model.profile()

Every failure the caller can fix raises a `tvmbits.UserError` (a ValueError) subclass with a
one-line message. The names below are imported on first use, so that a board, which has only
TVM and numpy, can run `python -m tvmbits board serve` without the compiler's dependencies.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "compile": "tvmbits.compiler",
    "load": "tvmbits.model",
    "Model": "tvmbits.model",
    "Remote": "tvmbits.remote",
    "Artifact": "tvmbits.artifact",
    **{
        name: "tvmbits.errors"
        for name in ("UserError", "ModelError", "OptionError", "TargetError", "ArtifactError", "InputError",
                     "BoardError", "TuningLogError")
    },
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tvmbits' has no attribute {name!r}")
