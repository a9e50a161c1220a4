import io
import json
import os
import tarfile

import pytest

from tvmbits.artifact import FORMAT, METADATA, check_output_path, metadata_sha256, open_artifact, write_artifact
from tvmbits.errors import UserError

META = {
    "profile": "x86_64", "arch": "x86_64", "device": "cpu",
    "inputs": [{"name": "input", "shape": [1, 3, 9, 9], "dtype": "float32"}],
    "outputs": [{"name": "logits", "shape": [1, 10], "dtype": "float32"}],
    "layers": [],
}


@pytest.fixture
def artifact(tmp_path):
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF not really a library")
    path = tmp_path / "model.tar"
    write_artifact(path, lib, META)
    return path


def test_round_trip_keeps_metadata_and_library(artifact):
    art = open_artifact(artifact)
    assert art.metadata["profile"] == "x86_64" and art.metadata["format"] == FORMAT
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
    _rewrite(artifact, metadata=json.dumps({"format": FORMAT}).encode())
    with pytest.raises(UserError, match="lacks profile"):
        open_artifact(artifact)


def test_not_a_tar_and_missing_file(tmp_path):
    bogus = tmp_path / "model.tar"
    bogus.write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match="not a readable tar"):
        open_artifact(bogus)
    with pytest.raises(UserError, match="no such artifact"):
        open_artifact(tmp_path / "absent.tar")


def _metadata(path):
    with tarfile.open(path) as tar:
        return json.load(tar.extractfile(METADATA))


EDITS = {
    "outputs removed": lambda m: m.update(outputs=[]),
    "an input's shape changed": lambda m: m["inputs"][0].update(shape=[1, 3, 8, 8]),
    "inputs a string": lambda m: m.update(inputs="input"),
    "device changed": lambda m: m.update(device="gpu"),
}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_edited_metadata_fails_its_checksum(artifact, edit):
    meta = _metadata(artifact)
    EDITS[edit](meta)
    _rewrite(artifact, metadata=json.dumps(meta).encode())
    with pytest.raises(UserError, match="metadata.json does not match its checksum"):
        open_artifact(artifact)


SCHEMA_BREAKS = {
    "outputs removed": EDITS["outputs removed"],
    "inputs a string": EDITS["inputs a string"],
    "device changed": EDITS["device changed"],
    "a negative extent": lambda m: m["inputs"][0].update(shape=[1, -3, 9, 9]),
    "an object dtype": lambda m: m["outputs"][0].update(dtype="object"),
    "layers a dict": lambda m: m.update(layers={}),
}


@pytest.mark.parametrize("edit", SCHEMA_BREAKS, ids=list(SCHEMA_BREAKS))
def test_metadata_with_a_matching_checksum_still_meets_the_schema(artifact, edit):
    meta = _metadata(artifact)
    SCHEMA_BREAKS[edit](meta)
    meta["metadata_sha256"] = metadata_sha256(meta)
    _rewrite(artifact, metadata=json.dumps(meta).encode())
    with pytest.raises(UserError, match="metadata.json: "):
        open_artifact(artifact)


@pytest.mark.parametrize("old", [1, 2])
def test_older_formats_are_refused(artifact, old):
    meta = _metadata(artifact)
    meta["format"] = old
    _rewrite(artifact, metadata=json.dumps(meta).encode())
    with pytest.raises(UserError, match=f"format {old} is not {FORMAT}; recompile it"):
        open_artifact(artifact)


def _tar_with(path, members):
    path.unlink(missing_ok=True)
    with tarfile.open(path, "w") as tar:
        for info, blob in members:
            tar.addfile(info, io.BytesIO(blob) if blob is not None else None)


def _file(name, blob):
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    return info, blob


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "directory", "fifo"])
def test_links_and_non_regular_members_are_refused(artifact, kind):
    with tarfile.open(artifact) as tar:
        meta = tar.extractfile(METADATA).read()
    lib = tarfile.TarInfo("lib.so")
    lib.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "directory": tarfile.DIRTYPE,
                "fifo": tarfile.FIFOTYPE}[kind]
    if kind in ("symlink", "hardlink"):
        lib.linkname = "/etc/passwd" if kind == "symlink" else METADATA
    _tar_with(artifact, [_file(METADATA, meta), (lib, None)])
    with pytest.raises(UserError, match="member 'lib.so' is"):
        open_artifact(artifact)


def test_extra_and_repeated_members_are_refused(artifact):
    with tarfile.open(artifact) as tar:
        lib, meta = tar.extractfile("lib.so").read(), tar.extractfile(METADATA).read()
    _tar_with(artifact, [_file("lib.so", lib), _file(METADATA, meta), _file("../evil", b"x")])
    with pytest.raises(UserError, match="unexpected member '../evil'"):
        open_artifact(artifact)
    _tar_with(artifact, [_file("lib.so", lib), _file(METADATA, meta), _file("lib.so", b"other")])
    with pytest.raises(UserError, match="appears twice"):
        open_artifact(artifact)


def test_output_path_checks(tmp_path, artifact):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    check_output_path(tmp_path / "new.tar", [model])
    check_output_path(artifact, [model])  # an artifact may be replaced
    cases = {
        model: "is the model",
        tmp_path / "absent" / "x.tar": "does not exist",
        tmp_path: "is a folder",
    }
    link = tmp_path / "link.tar"
    os.symlink(model, link)
    cases[link] = "is the model"
    hard = tmp_path / "hard.tar"
    os.link(model, hard)
    cases[hard] = "is the model"
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    cases[other] = "not a tvmbits artifact; give --force"
    for output, message in cases.items():
        with pytest.raises(UserError, match=message):
            check_output_path(output, [model])
    check_output_path(other, [model], force=True)
    with pytest.raises(UserError, match="is the model"):
        check_output_path(model, [model], force=True)


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF")
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(UserError, match="cannot write it"):
        write_artifact(target, lib, META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.so", "out"]
