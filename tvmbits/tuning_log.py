"""Tuning logs: the MetaSchedule databases `tvmbits tune` writes and `compile` applies.

A tuning log is a folder: MetaSchedule's JSON database (`database_workload.json`,
`database_tuning_record.json`, one JSON value per line, appended as each measurement
finishes, so an interrupted or killed run keeps every finished measurement and a rerun starts
from them) and `tuned_on.json` (profile, CPU model and LLVM's name for it, cores, TVM version of the last
run).
A line that does not parse (a run killed mid-write, a hand edit) is dropped with a warning.
The logs shipped with tvmbits are `tuning_logs/<profile>/` at the top of the source tree,
installed as the package data `tvmbits.tuning_logs` and never written at run time. `tvmbits
tune` appends by default to the user's log, `$XDG_CACHE_HOME/tvmbits/tuning_logs/<profile>`
(`~/.cache/...`), which starts as a copy of the shipped one; `compile` reads the user's log
when there is one, else the shipped one.
"""

import importlib.resources
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Callable

import tvm
from tvm.s_tir import meta_schedule as ms

from tvmbits.errors import TuningLogError

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
TUNED_ON = "tuned_on.json"


def shipped_log(profile_name: str) -> Path:
    """The tuning log shipped for a profile (it may not exist)."""
    return Path(str(importlib.resources.files("tvmbits.tuning_logs"))) / profile_name


def user_log(profile_name: str) -> Path:
    """The user's own tuning log of a profile, which `tune` appends to by default."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tvmbits" / "tuning_logs" / profile_name


def default_log(profile_name: str) -> Path:
    """The log `compile` applies by default: the user's, else the shipped one (may not exist)."""
    own = user_log(profile_name)
    return own if (own / RECORDS).is_file() else shipped_log(profile_name)


def start_user_log(profile_name: str, log: Callable[[str], None]) -> Path:
    """The user's log of a profile for `tune` to append to; a first one starts as a copy of the
    shipped log, so that tuning goes on from the shipped measurements."""
    own = user_log(profile_name)
    shipped = shipped_log(profile_name)
    if not own.exists() and (shipped / RECORDS).is_file():
        log(f"starting {own} from the shipped tuning log")
        partial = own.with_name(own.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(shipped, partial, ignore=shutil.ignore_patterns("__pycache__"))
        partial.replace(own)
    return own


def open_database(folder: str | Path, log: Callable[[str], None], create: bool = False) -> ms.database.JSONDatabase:
    """The JSON database in `folder`, after dropping lines that do not parse (with a warning)."""
    folder = Path(folder)
    if not folder.is_dir():
        if not create:
            raise TuningLogError(f"{folder}: no such tuning log folder")
        folder.mkdir(parents=True)
    workloads = _clean_lines(folder / WORKLOADS, lambda value: isinstance(value, list), log)
    _clean_lines(
        folder / RECORDS,
        lambda value: isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
        and 0 <= value[0] < workloads,
        log,
    )
    return ms.database.JSONDatabase(str(folder / WORKLOADS), str(folder / RECORDS), module_equality="structural")


def _clean_lines(path: Path, valid: Callable, log: Callable[[str], None]) -> int:
    """Rewrite `path` without lines that are not valid JSON values (atomically); the count kept."""
    if not path.exists():
        path.touch()
        return 0
    kept, dropped = [], 0
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = None
        if value is None or not valid(value):
            log(f"warning: {path}:{number}: not a tuning-log entry, skipped")
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        partial = path.with_name(path.name + ".partial")
        partial.write_text("".join(line + "\n" for line in kept))
        partial.replace(path)
    return len(kept)


def write_tuned_on(folder: Path, profile_name: str) -> None:
    info = {
        "profile": profile_name,
        "cpu": cpu_model(),
        "llvm_cpu": tvm.target.codegen.llvm_get_system_cpu(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "tvm_version": tvm.__version__,
    }
    (folder / TUNED_ON).write_text(json.dumps(info, indent=2) + "\n")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
