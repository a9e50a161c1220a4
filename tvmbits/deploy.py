"""Between files and a compiled model: input arrays from .npy files, outputs into them, and
the check that a device can run an artifact before anything is uploaded to it.
"""

import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from tvmbits import runtime
from tvmbits.errors import BoardError, InputError, OptionError


def read_inputs(
    specs: list[str], metadata: dict, log: Callable[[str], None] = lambda message: None
) -> dict[str, np.ndarray]:
    """`NAME=FILE.npy` pairs (a bare FILE.npy for a single-input model) → arrays by input name
    (their shapes and dtypes are checked by the model they are given to).

    Each input is given once, from a .npy file (an .npz archive, a pickle or any other file is
    refused). Inputs holding NaN or ±Inf are run, with one warning saying what the low-bit
    layers make of them (`nonfinite_warning`)."""
    expected = {spec["name"]: spec for spec in metadata["inputs"]}
    arrays = {}
    for item in specs:
        name, sep, path = item.rpartition("=")
        if not sep:
            if len(expected) != 1:
                raise InputError(f"--input {item}: say which input, as NAME=FILE.npy ({', '.join(expected)})")
            name = next(iter(expected))
        if name not in expected:
            raise InputError(f"--input {item}: the model has no input '{name}' (inputs: {', '.join(expected)})")
        if name in arrays:
            raise InputError(f"--input {item}: input '{name}' is given twice")
        arrays[name] = read_npy(item, path)
    missing = [name for name in expected if name not in arrays]
    if missing:
        raise InputError(f"missing --input for {', '.join(missing)}")
    warning = nonfinite_warning(arrays, metadata)
    if warning:
        log(warning)
    return arrays


def random_inputs(specs: list[dict], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for `specs` ({"name", "shape", "dtype"}, as an artifact's metadata lists
    them): standard normal, integers drawn from 0..9 for integer inputs."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        if np.issubdtype(np.dtype(spec["dtype"]), np.floating):
            out[spec["name"]] = rng.standard_normal(spec["shape"]).astype(spec["dtype"])
        else:
            out[spec["name"]] = rng.integers(0, 10, spec["shape"]).astype(spec["dtype"])
    return out


def read_npy(item: str, path: str) -> np.ndarray:
    """One array from a .npy file; anything else (an .npz, a pickle, text) is an InputError."""
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise InputError(f"--input {item}: {path} is not a .npy file (save one array with numpy.save)")
            f.seek(0)
            array = np.load(f, allow_pickle=False)
    except InputError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"--input {item}: cannot read {path} as .npy ({type(err).__name__})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise InputError(f"--input {item}: {path} does not hold a numeric array")
    return array


def nonfinite_warning(arrays: dict[str, np.ndarray], metadata: dict) -> str | None:
    """One warning when an input holds NaN or ±Inf and the model has low-bit layers: their
    rule is the model's binarization x ≥ 0 → +1, so NaN (x ≥ 0 is false) becomes −1 where
    ONNX `Sign` would pass NaN on, +Inf +1 and −Inf −1; k-bit quantizers clamp ±Inf to their
    range and give NaN no defined code."""
    if not any(layer.get("kernel") != "float" for layer in metadata["layers"]):
        return None
    bad = [name for name, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
    if not bad:
        return None
    return (
        f"warning: input {', '.join(repr(n) for n in bad)} holds NaN or infinite values; this model's low-bit "
        "layers binarize by x >= 0 -> +1, so NaN becomes -1 (ONNX Sign keeps NaN) and +/-Inf +/-1, "
        "and k-bit quantizers clamp +/-Inf to their range and give NaN no defined code"
    )


def check_output_folder(folder: str | Path) -> None:
    """Refuse, before the model runs, a `run --output` folder that is a file or cannot be made
    or written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OptionError(f"--output {folder}: is a file, not a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OptionError(f"--output {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OptionError(f"--output {folder}: {existing} is not writable")


def check_board(meta: dict, session: "runtime.Session") -> None:
    """Refuse, before uploading, an artifact the session's device cannot run: a CPU library built
    for another architecture, or one built with another TVM or tvmbits release (major.minor)
    than the device has. A board that cannot say (a plain TVM rpc_server) is not checked."""
    machine = session.machine()
    if meta["device"] == "cpu" and machine is not None and machine != meta["arch"]:
        raise BoardError(
            f"artifact is built for {meta['profile']} ({meta['arch']}) but {session.describe()} is {machine}"
        )
    versions = session.versions()
    if versions is None:
        return
    for package, key in (("tvm", "tvm_version"), ("tvmbits", "tvmbits_version")):
        built = meta.get(key)
        if built is not None and _release(built) != _release(versions[package]):
            raise BoardError(
                f"artifact is built with {package} {built} but {session.describe()} has {package} "
                f"{versions[package]}: install {package} {'.'.join(_release(built))} there, or recompile"
            )


def _release(version: str) -> tuple[str, ...]:
    """The major.minor release of a version string ("0.27.0.post1" → ("0", "27"))."""
    return tuple(version.split(".")[:2])


def write_outputs(outputs: dict[str, np.ndarray], folder: str | Path) -> dict[str, str]:
    """`<output name>.npy` in `folder` for each output; a name's characters other than letters,
    digits, `_`, `-` and `.` become `_` (PyTorch exports name outputs `/layer/Add_output_0`),
    so every file lands inside `folder`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OptionError(f"--output {folder}: cannot make the folder ({err.strerror or err})") from None
    paths: dict[str, str] = {}
    for name, value in outputs.items():
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "output"
        while str(folder / f"{stem}.npy") in paths.values():
            stem += "_"
        path = folder / f"{stem}.npy"
        np.save(path, value)
        paths[name] = str(path)
    return paths
