"""Between files and a compiled model: input arrays from .npy files, outputs into them, and
the check that a device can run an artifact before anything is uploaded to it.
"""

from pathlib import Path

import numpy as np

from tvmbits import runtime
from tvmbits.errors import BoardError, InputError


def read_inputs(specs: list[str], metadata: dict) -> dict[str, np.ndarray]:
    """`NAME=FILE.npy` pairs (a bare FILE.npy for a single-input model) → arrays by input name
    (their shapes and dtypes are checked by the model they are given to)."""
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


def write_outputs(outputs: dict[str, np.ndarray], folder: str | Path) -> dict[str, str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, value in outputs.items():
        path = folder / f"{name}.npy"
        np.save(path, value)
        paths[name] = str(path)
    return paths
