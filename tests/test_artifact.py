import io
import json
import tarfile

import pytest

from tvmbits.artifact import METADATA, open_artifact, write_artifact
from tvmbits.errors import UserError

META = {"profile": "x86_64", "arch": "x86_64", "device": "cpu", "inputs": [], "outputs": [], "layers": []}


@pytest.fixture
def artifact(tmp_path):
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF not really a library")
    path = tmp_path / "model.tar"
    write_artifact(path, lib, META)
    return path


def test_round_trip_keeps_metadata_and_library(artifact):
    art = open_artifact(artifact)
    assert art.metadata["profile"] == "x86_64" and art.metadata["format"] == 1
    assert art.library.read_bytes().startswith(b"\x7fELF")


def _rewrite(path, library=None, metadata=None):
    with tarfile.open(path) as tar:
        lib = tar.extractfile("lib.so").read()
        meta = tar.extractfile(METADATA).read()
    path.unlink()
    with tarfile.open(path, "w") as tar:
        for name, blob in (("lib.so", library or lib), (METADATA, metadata or meta)):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_tampered_library_fails_its_checksum(artifact):
    _rewrite(artifact, library=b"\x7fELF tampered")
    with pytest.raises(UserError, match="does not match its checksum"):
        open_artifact(artifact)


def test_broken_metadata_is_refused(artifact):
    _rewrite(artifact, metadata=b"{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        open_artifact(artifact)
    _rewrite(artifact, metadata=json.dumps({"format": 1}).encode())
    with pytest.raises(UserError, match="lacks profile"):
        open_artifact(artifact)


def test_not_a_tar_and_missing_file(tmp_path):
    bogus = tmp_path / "model.tar"
    bogus.write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match="not a readable tar"):
        open_artifact(bogus)
    with pytest.raises(UserError, match="no such artifact"):
        open_artifact(tmp_path / "absent.tar")
