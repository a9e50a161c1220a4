"""`tar_extract.extract` keeps members inside the folder with or without Python's extraction
filters (Debian 12's Python 3.11.2, on the emulated boards and many AArch64 servers, has none)."""

import io
import os
import tarfile

import pytest

from tvmbits import tar_extract


def archive(path, members):
    """A tar at `path` of (name, bytes or None for a symlink to /etc/passwd) members."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o4777
                tar.addfile(info, io.BytesIO(data))
    return tarfile.open(path)


@pytest.mark.parametrize("filters", [True, False], ids=["python-filters", "checked-here"])
def test_members_are_extracted_by_name_without_special_bits(tmp_path, monkeypatch, filters):
    monkeypatch.setattr(tar_extract, "HAS_FILTERS", filters and tar_extract.HAS_FILTERS)
    out = tmp_path / "out"
    with archive(tmp_path / "a.tar", [("lib.so", b"elf"), ("metadata.json", b"{}")]) as tar:
        tar_extract.extract(tar, out, ["lib.so"])
    assert [p.name for p in out.iterdir()] == ["lib.so"] and (out / "lib.so").read_bytes() == b"elf"
    assert (out / "lib.so").stat().st_mode & 0o7022 == 0  # no set-uid bits, no group/other write


@pytest.mark.parametrize("filters", [True, False], ids=["python-filters", "checked-here"])
@pytest.mark.parametrize("member", [("../escape", b"x"), ("link", None)], ids=["dotdot", "symlink"])
def test_members_that_would_leave_the_folder_are_refused(tmp_path, monkeypatch, filters, member):
    monkeypatch.setattr(tar_extract, "HAS_FILTERS", filters and tar_extract.HAS_FILTERS)
    out = tmp_path / "out"
    with archive(tmp_path / "a.tar", [member]) as tar, pytest.raises(tarfile.TarError):
        tar_extract.extract(tar, out)
    assert not (tmp_path / "escape").exists() and not (out / "link").exists()


@pytest.mark.parametrize("filters", [True, False], ids=["python-filters", "checked-here"])
def test_an_absolute_member_never_lands_outside(tmp_path, monkeypatch, filters):
    """Python's filter extracts /name as name inside the folder; without it, it is refused."""
    monkeypatch.setattr(tar_extract, "HAS_FILTERS", filters and tar_extract.HAS_FILTERS)
    name = f"/{tmp_path.name}-absolute"
    with archive(tmp_path / "a.tar", [(name, b"x")]) as tar:
        try:
            tar_extract.extract(tar, tmp_path / "out")
        except tarfile.TarError:
            assert not tar_extract.HAS_FILTERS
        else:
            assert (tmp_path / "out" / name.lstrip("/")).exists()
    assert not (tmp_path.parent / name.lstrip("/")).exists() and not os.path.exists(name)
