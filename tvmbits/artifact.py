"""The compiled-model package: `model.tar` = `lib.so` + `metadata.json`, two regular files.

`lib.so` is the exported Relax VM executable with its kernels, linked for the profile's device:
`prepare()`, run once when it is loaded, returns the weights it unpacks, and `main` takes the
model's inputs followed by them (`passes/unpack_at_load.py`). `metadata.json` (format 3)
holds: tvmbits and TVM versions, the target profile name, its TVM target and the device's CPU
architecture (`uname -m`), device kind, input and output names with shapes and dtypes, one
record per conv/dense layer (kernel, bit widths, weight bytes before and after packing, why a
layer stayed float), the sha256 of `lib.so` (`library_sha256`) and the
sha256 of the metadata itself (`metadata_sha256`: of its canonical JSON, sorted keys, without
that key). `open_artifact` checks both checksums and the metadata's schema, and refuses links
and any member that is not one of the two regular files, before anything loads the library.
Artifacts of other formats are refused: recompile them (format 1 had no metadata checksum,
format 2's `main` unpacked the sub-byte weights on every call and had no `prepare`).

`check_output_path` refuses, before a compile starts, an output that cannot be written or must
not be overwritten (the model itself, a folder, a file that is not a tvmbits artifact).
"""

import hashlib
import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvmbits import tar_extract
from tvmbits.errors import ArtifactError

FORMAT = 3
LIBRARY = "lib.so"
METADATA = "metadata.json"
REQUIRED_KEYS = (
    "format", "profile", "arch", "device", "inputs", "outputs", "layers", "library_sha256", "metadata_sha256"
)
DEVICES = ("cpu", "cuda")


@dataclass
class Artifact:
    """A compiled model: its library file and metadata (`tvmbits.compile` returns one,
    `open_artifact` reads one back); `save` writes the `model.tar`."""

    metadata: dict
    library: Path  # lib.so, valid while `workdir` lives
    workdir: tempfile.TemporaryDirectory

    @staticmethod
    def build(library: Path, metadata: dict, workdir: tempfile.TemporaryDirectory) -> "Artifact":
        """The artifact of a freshly linked `library` (inside `workdir`) and its metadata."""
        return Artifact(_sealed(metadata, library), library, workdir)

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write the artifact to `path`, all or nothing (`write_artifact`), after
        `check_output_path` (`force`: replace a file that is not a tvmbits artifact)."""
        check_output_path(path, (), force)
        write_artifact(Path(path), self.library, self.metadata)
        return Path(path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metadata_sha256(metadata: dict) -> str:
    """The sha256 of `metadata`'s canonical JSON (sorted keys, no spaces), `metadata_sha256` left out."""
    body = {key: value for key, value in metadata.items() if key != "metadata_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_artifact(path: str | Path) -> bool:
    """Whether `path` is a tar archive holding a library and metadata (not whether it is intact)."""
    try:
        with tarfile.open(path, "r:") as tar:
            return {LIBRARY, METADATA} <= set(tar.getnames())
    except Exception:  # anything unreadable is not an artifact
        return False


def check_output_path(output: str | Path, sources=(), force: bool = False) -> None:
    """Refuse, before any work is done, an artifact path that cannot or must not be written: a
    folder, a path whose folder does not exist or is not writable, one of the `sources` (the
    model, its external data; also through a link), or an existing file that is not a tvmbits
    artifact (unless `force`)."""
    path = Path(output)
    if path.is_dir():
        raise ArtifactError(f"output {path}: is a folder; name the artifact file (e.g. {path / 'model.tar'})")
    folder = path.absolute().parent
    if not folder.is_dir():
        raise ArtifactError(f"output {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ArtifactError(f"output {path}: folder {folder} is not writable")
    for source in sources:
        if _same_file(path, Path(source)):
            raise ArtifactError(f"output {path}: is the model {source}; refusing to overwrite it")
    if (path.exists() or path.is_symlink()) and not force and not is_artifact(path):
        raise ArtifactError(
            f"output {path}: exists and is not a tvmbits artifact; give --force to overwrite it"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _sealed(metadata: dict, library: Path) -> dict:
    """`metadata` with its format and both checksums."""
    metadata = {**metadata, "format": FORMAT, "library_sha256": sha256(library)}
    return {**metadata, "metadata_sha256": metadata_sha256(metadata)}


def write_artifact(path: Path, library: Path, metadata: dict) -> None:
    """Write the artifact atomically: into `<path>.partial` beside it, then renamed; a failure
    leaves nothing behind and is a one-line ArtifactError."""
    metadata = _sealed(metadata, library)
    blob = json.dumps(metadata, indent=2).encode()
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        with tarfile.open(partial, "w") as tar:
            tar.add(library, arcname=LIBRARY)
            info = tarfile.TarInfo(METADATA)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        partial.replace(path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise ArtifactError(f"output {path}: cannot write it ({err.strerror or err})") from None


def open_artifact(path: str | Path) -> Artifact:
    """Extract and validate `path`; every defect is a one-line UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact")
    workdir = tempfile.TemporaryDirectory(prefix="tvmbits-")
    try:
        with tarfile.open(path, "r:") as tar:  # an artifact is an uncompressed tar
            members = tar.getmembers()
            _check_members(path, members)
            tar_extract.extract(tar, workdir.name, [LIBRARY])
            metadata = json.load(tar.extractfile(METADATA))
    except ArtifactError:
        workdir.cleanup()
        raise
    except (tarfile.TarError, EOFError, OSError) as err:
        workdir.cleanup()
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ArtifactError(f"{path}: not a readable tar archive ({reason})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        workdir.cleanup()
        raise ArtifactError(f"{path}: {METADATA} is not valid JSON") from None
    try:
        _check_metadata(path, metadata)
        library = Path(workdir.name) / LIBRARY
        if sha256(library) != metadata["library_sha256"]:
            raise ArtifactError(f"{path}: {LIBRARY} does not match its checksum; the artifact is corrupt")
    except ArtifactError:
        workdir.cleanup()
        raise
    return Artifact(metadata, library, workdir)


def _check_members(path: Path, members: list) -> None:
    """Exactly one regular file each named lib.so and metadata.json: no links, folders, devices."""
    names = [member.name for member in members]
    if not {LIBRARY, METADATA} <= set(names):
        raise ArtifactError(f"{path}: not a tvmbits artifact (needs {LIBRARY} and {METADATA})")
    for member in members:
        if member.name not in (LIBRARY, METADATA):
            raise ArtifactError(
                f"{path}: unexpected member '{member.name}'; a tvmbits artifact holds only {LIBRARY} and {METADATA}"
            )
        if names.count(member.name) > 1:
            raise ArtifactError(f"{path}: member '{member.name}' appears twice; the artifact is corrupt")
        if not member.isreg():
            kind = "a link" if member.issym() or member.islnk() else "not a regular file"
            raise ArtifactError(f"{path}: member '{member.name}' is {kind}; refused")


def _check_metadata(path: Path, metadata) -> None:
    """The checksum over the metadata, then its schema: every key the runtime and `inspect` read."""
    if not isinstance(metadata, dict):
        raise ArtifactError(f"{path}: {METADATA} is not a JSON object")
    if "format" in metadata and metadata["format"] != FORMAT:
        raise ArtifactError(f"{path}: artifact format {metadata['format']!r} is not {FORMAT}; recompile it")
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise ArtifactError(f"{path}: {METADATA} lacks {', '.join(missing)}")
    if metadata["metadata_sha256"] != metadata_sha256(metadata):
        raise ArtifactError(f"{path}: {METADATA} does not match its checksum; the artifact is corrupt or edited")
    problem = metadata_problem(metadata)
    if problem:
        raise ArtifactError(f"{path}: {METADATA}: {problem}")


def metadata_problem(metadata: dict) -> str | None:
    """What is wrong with `metadata`'s schema, in words; None when nothing is."""
    for key in ("profile", "arch", "device", "library_sha256"):
        if not isinstance(metadata[key], str):
            return f"'{key}' is not a string"
    if metadata["device"] not in DEVICES:
        return f"unknown device '{metadata['device']}'"
    for key in ("inputs", "outputs"):
        specs = metadata[key]
        if not isinstance(specs, list) or (key == "outputs" and not specs):
            return f"'{key}' is not a list of tensors"
        names = []
        for spec in specs:
            problem = _tensor_problem(spec)
            if problem:
                return f"{key}: {problem}"
            names.append(spec["name"])
        if len(set(names)) != len(names):
            return f"{key}: a name appears twice"
    layers = metadata["layers"]
    if not isinstance(layers, list):
        return "'layers' is not a list"
    for layer in layers:
        if not isinstance(layer, dict) or not all(isinstance(layer.get(k), str) for k in ("name", "kernel")):
            return "a layer lacks its name or kernel"
        if layer["kernel"] == "float":
            continue
        for key in ("weight_bytes_float", "weight_bytes_packed"):
            if not _is_count(layer.get(key)):
                return f"layer '{layer['name']}': '{key}' is not a byte count"
    return None


def _tensor_problem(spec) -> str | None:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return "an entry is not {name, shape, dtype}"
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) and d > 0 for d in shape):
        return f"'{spec['name']}' has no valid shape"
    try:
        if not isinstance(spec.get("dtype"), str) or np.dtype(spec["dtype"]).kind not in "biuf":
            return f"'{spec['name']}' has no valid dtype"
    except (TypeError, ValueError):
        return f"'{spec['name']}' has no valid dtype"
    return None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
