"""The compiled-model package: `model.tar` = `lib.so` + `metadata.json`.

`lib.so` is the exported Relax VM executable with its kernels, linked for the profile's device.
`metadata.json` (format 1) holds: tvmbits and TVM versions, the target profile name, its TVM
target and the device's CPU architecture (`uname -m`), device kind, input and output names with
shapes and dtypes, one record per conv/dense layer (kernel, bit widths, weight bytes before and
after packing, why a layer stayed float), and the sha256 of `lib.so`, which `open_artifact`
checks before anything loads the library.
"""

import hashlib
import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tvmbits.errors import ArtifactError

FORMAT = 1
LIBRARY = "lib.so"
METADATA = "metadata.json"
REQUIRED_KEYS = ("format", "profile", "arch", "device", "inputs", "outputs", "layers", "library_sha256")


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
        return Artifact({"format": FORMAT, **metadata, "library_sha256": sha256(library)}, library, workdir)

    def save(self, path: str | Path) -> Path:
        """Write the artifact to `path` (all or nothing: a `.partial` file renamed at the end)."""
        write_artifact(Path(path), self.library, self.metadata)
        return Path(path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_artifact(path: Path, library: Path, metadata: dict) -> None:
    """Write `library` and `metadata` (with its format and the library's checksum) as a tar."""
    metadata = {**metadata, "format": FORMAT, "library_sha256": sha256(library)}
    blob = json.dumps(metadata, indent=2).encode()
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        tar.add(library, arcname=LIBRARY)
        info = tarfile.TarInfo(METADATA)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    partial.replace(path)


def open_artifact(path: str | Path) -> Artifact:
    """Extract and validate `path`; every defect is a one-line UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact")
    workdir = tempfile.TemporaryDirectory(prefix="tvmbits-")
    try:
        with tarfile.open(path) as tar:
            names = set(tar.getnames())
            if not {LIBRARY, METADATA} <= names:
                raise ArtifactError(f"{path}: not a tvmbits artifact (needs {LIBRARY} and {METADATA})")
            tar.extract(LIBRARY, workdir.name, filter="data")
            metadata = json.load(tar.extractfile(METADATA))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ArtifactError(f"{path}: not a readable tar archive ({err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"{path}: {METADATA} is not valid JSON") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(metadata, dict) or key not in metadata]
    if missing:
        raise ArtifactError(f"{path}: {METADATA} lacks {', '.join(missing)}")
    if metadata["format"] != FORMAT:
        raise ArtifactError(f"{path}: artifact format {metadata['format']} is not {FORMAT}; recompile it")
    library = Path(workdir.name) / LIBRARY
    if sha256(library) != metadata["library_sha256"]:
        raise ArtifactError(f"{path}: {LIBRARY} does not match its checksum; the artifact is corrupt")
    return Artifact(metadata, library, workdir)
