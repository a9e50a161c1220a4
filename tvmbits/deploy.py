"""Run a compiled artifact on a session's device: check, upload, run, time, profile.

Inputs are checked against the artifact's metadata (names, shapes, dtypes), and the device's
CPU architecture and TVM and tvmbits releases against the artifact's, before anything is
uploaded.
"""

import os
import re
import time as clock
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tvmbits import runtime
from tvmbits.artifact import Artifact
from tvmbits.errors import BoardError, InputError, OptionError

PROGRESS_AFTER_S = 2.0  # timing expected to take longer than this prints progress
PROGRESS_EVERY_S = 1.0  # one progress line about this often


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    timing_ms: dict | None
    profile: list | None


def read_inputs(
    specs: list[str], metadata: dict, log: Callable[[str], None] = lambda message: None
) -> dict[str, np.ndarray]:
    """`NAME=FILE.npy` pairs (a bare FILE.npy for a single-input model) → checked arrays.

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
    for name, array in arrays.items():
        spec = expected[name]
        if tuple(array.shape) != tuple(spec["shape"]):
            raise InputError(
                f"input '{name}': shape {tuple(array.shape)} does not match the model's {tuple(spec['shape'])}"
            )
        if array.dtype != np.dtype(spec["dtype"]):
            raise InputError(f"input '{name}': dtype {array.dtype} does not match the model's {spec['dtype']}")
    warning = nonfinite_warning(arrays, metadata)
    if warning:
        log(warning)
    return arrays


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


def run_artifact(
    art: Artifact,
    inputs: dict[str, np.ndarray],
    session: "runtime.Session",
    repeat: int = 0,
    profile: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> RunResult:
    """Check `art` against the session's device, upload and load it, run it once on `inputs`;
    with `repeat` > 0 also time `repeat` runs (ms, measured on the device), with `profile` also
    time each kernel (`runtime.profile`)."""
    meta = art.metadata
    check_board(meta, session)
    loaded = session.load(art.library, meta["device"])
    args = [inputs[spec["name"]] for spec in meta["inputs"]]
    started = clock.monotonic()
    values = runtime.run(session, loaded, args)
    once = clock.monotonic() - started
    outputs = {spec["name"]: value for spec, value in zip(meta["outputs"], values)}
    timing = None
    if repeat > 0:
        times = np.array(_time_with_progress(session, loaded, args, repeat, once, log))
        timing = {
            "mean": float(times.mean()),
            "median": float(np.median(times)),
            "std": float(times.std()),
            "repeat": repeat,
        }
    rows = runtime.profile(session, loaded, args) if profile else None
    return RunResult(outputs, timing, rows)


def _time_with_progress(session, loaded, args, repeat: int, once: float, log) -> list[float]:
    """`repeat` timings; when they should take longer than PROGRESS_AFTER_S (from the first run's
    `once` seconds), measured in batches of about PROGRESS_EVERY_S with a progress line each,
    so that a long `--repeat` shows it is alive and Ctrl-C ends it between batches."""
    if repeat * once <= PROGRESS_AFTER_S:
        return runtime.time(session, loaded, args, number=1, repeat=repeat)
    batch = max(1, int(PROGRESS_EVERY_S / max(once, 1e-9)))
    log(f"timing {repeat} runs (about {repeat * once:.0f} s)")
    times: list[float] = []
    while len(times) < repeat:
        times += runtime.time(session, loaded, args, number=1, repeat=min(batch, repeat - len(times)))
        log(f"timed {len(times)}/{repeat} runs")
    return times


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
