"""Run a compiled artifact on a session's device: check, upload, run, time, profile.

Inputs are checked against the artifact's metadata (names, shapes, dtypes), and the device's
CPU architecture and TVM and tvmbits releases against the artifact's, before anything is
uploaded.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvmbits import runtime
from tvmbits.artifact import Artifact
from tvmbits.errors import BoardError, InputError


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    timing_ms: dict | None
    profile: list | None


def read_inputs(specs: list[str], metadata: dict) -> dict[str, np.ndarray]:
    """`NAME=FILE.npy` pairs (a bare FILE.npy for a single-input model) → checked arrays."""
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
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(f"--input {item}: cannot read {path} as .npy ({type(err).__name__})") from None
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
    return arrays


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
) -> RunResult:
    """Check `art` against the session's device, upload and load it, run it once on `inputs`;
    with `repeat` > 0 also time `repeat` runs (ms, measured on the device), with `profile` also
    time each kernel (`runtime.profile`)."""
    meta = art.metadata
    check_board(meta, session)
    loaded = session.load(art.library, meta["device"])
    args = [inputs[spec["name"]] for spec in meta["inputs"]]
    values = runtime.run(session, loaded, args)
    outputs = {spec["name"]: value for spec, value in zip(meta["outputs"], values)}
    timing = None
    if repeat > 0:
        times = np.array(runtime.time(session, loaded, args, number=1, repeat=repeat))
        timing = {
            "mean": float(times.mean()),
            "median": float(np.median(times)),
            "std": float(times.std()),
            "repeat": repeat,
        }
    rows = runtime.profile(session, loaded, args) if profile else None
    return RunResult(outputs, timing, rows)


def write_outputs(outputs: dict[str, np.ndarray], folder: str | Path) -> dict[str, str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, value in outputs.items():
        path = folder / f"{name}.npy"
        np.save(path, value)
        paths[name] = str(path)
    return paths
