"""Extracting tar archives safely on every Python tvmbits supports.

Python's extraction filters (`filter="data"`: no absolute paths, no `..`, no links out of the
folder, no devices, no set-uid bits) arrived in 3.12 and in 3.11.4 / 3.10.12; Debian 12's Python
(3.11.2, the emulated boards' and many AArch64 servers') lacks them. There the same rules are
checked here before extracting.
"""

import tarfile
from pathlib import Path, PurePosixPath

HAS_FILTERS = hasattr(tarfile, "data_filter")


def extract(tar: tarfile.TarFile, folder: str | Path, names: list[str] | None = None) -> None:
    """Extract the members named `names` (all of them with None) of `tar` into `folder`; raises
    tarfile.TarError for a member that would land outside it or is a link, device or FIFO."""
    members = [m for m in tar.getmembers() if names is None or m.name in names]
    if HAS_FILTERS:
        tar.extractall(folder, members=members, filter="data")
        return
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise tarfile.TarError(f"{member.name}: would be extracted outside {folder}; refused")
        if not (member.isreg() or member.isdir()):
            raise tarfile.TarError(f"{member.name}: a link, device or FIFO; refused")
        member.mode &= 0o755  # no set-uid, set-gid or sticky bits, no group/other write
    tar.extractall(folder, members=members)
