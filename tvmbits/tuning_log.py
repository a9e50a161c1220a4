"""Tuning logs: the MetaSchedule databases `tvmbits tune` writes and `compile` applies.

A tuning log is a folder: MetaSchedule's JSON database (`database_workload.json`,
`database_tuning_record.json`, one JSON value per line), `tuned_on.json` (profile, CPU model
and LLVM's name for it, cores, TVM version of the last run) and `confirmed.json`. A record line
is `[workload index, record]`, the index counting the non-empty lines of the workload file.
`confirmed.json` maps a workload's structural hash to the record `tune` chose for it after
re-measuring its default, its previous choice and its fastest records against each other
(`tune._confirm`): the record `compile` applies to that workload, whatever the others' single
timings say, until a later run confirms another (a run interrupted before that keeps it).

Reading never modifies a log: `read_database` (what `compile` applies) loads every line that
parses and deserializes into a workload or a record into memory and skips any other (a run
killed mid-write, a hand edit) with one warning naming the file and line (a confirmed choice
that does not read: one warning, and the workload's fastest record applies). `tune` appends:
`TuningLogWriter` lets MetaSchedule measure into a private copy of the valid entries and
appends each batch's new lines to the log with one `write` per file, so an interrupted or
killed run leaves whole lines and a rerun starts from them. Lines that do not read are kept
and skipped, unless the user asks for `repair` (`tvmbits tune --repair`), which rewrites the
log without them after copying each file to `<file>.bak`.
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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from tvmbits.errors import TuningLogError
from tvmbits.schedules import register_all_intrinsics

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
TUNED_ON = "tuned_on.json"
CONFIRMED = "confirmed.json"
MODULE_EQUALITY = "structural"


def shipped_log(profile_name: str) -> Path:
    """The tuning log shipped for a profile (it may not exist); `host` takes the one of this
    machine's architecture (`tuning_logs/x86_64` on an x86-64 machine)."""
    name = platform.machine() if profile_name == "host" else profile_name
    return Path(str(importlib.resources.files("tvmbits.tuning_logs"))) / name


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


@dataclass
class LogEntries:
    """The entries of a tuning log that read, in file order, and how many lines did not."""

    workloads: dict[int, tuple[ms.database.Workload, str]] = field(default_factory=dict)  # index → (workload, line)
    records: list[tuple[int, ms.database.TuningRecord, str]] = field(default_factory=list)  # (index, record, line)
    workload_lines: int = 0  # non-empty lines of the workload file: the next workload's index
    bad: int = 0


def check_folder(folder: str | Path) -> None:
    """A tuning log to read must be a folder (checked before a compile starts)."""
    if not Path(folder).is_dir():
        raise TuningLogError(f"{folder}: no such tuning log folder")


def read_log(folder: str | Path, log: Callable[[str], None]) -> LogEntries:
    """The valid entries of the tuning log `folder`, each bad line skipped with a warning
    naming the file and line. Nothing is written."""
    folder = Path(folder)
    check_folder(folder)
    register_all_intrinsics()  # records that tensorize name them
    entries = LogEntries()
    for number, line, value in _lines(folder / WORKLOADS, log):
        index = entries.workload_lines
        entries.workload_lines += 1
        workload = _deserialize(lambda: ms.database.Workload.from_json(value))
        if workload is None:
            _skip(folder / WORKLOADS, number, log)
            entries.bad += 1
            continue
        entries.workloads[index] = (workload, line)
    for number, line, value in _lines(folder / RECORDS, log):
        index = value[0] if isinstance(value, list) and len(value) == 2 else None
        if not isinstance(index, int) or isinstance(index, bool) or index not in entries.workloads:
            record = None
        else:
            workload = entries.workloads[index][0]
            record = _deserialize(lambda: ms.database.TuningRecord.from_json(value[1], workload))
        if record is None:
            _skip(folder / RECORDS, number, log)
            entries.bad += 1
            continue
        entries.records.append((index, record, line))
    return entries


def _lines(path: Path, log: Callable[[str], None]):
    """(line number, line, JSON value) for each non-empty line; a line that is not JSON is
    given with value None (it still counts: record lines refer to workloads by position)."""
    if not path.exists():
        return
    try:
        text = path.read_bytes().decode(errors="replace")
    except OSError as err:
        raise TuningLogError(f"{path}: cannot read it ({err.strerror or err})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            value = None
        yield number, line, value


def _deserialize(make):
    try:
        return make()
    except Exception:  # TVM raises InternalError/TypeError/ValueError/... for a malformed entry
        return None


def _skip(path: Path, number: int, log: Callable[[str], None]) -> None:
    log(f"warning: {path}:{number}: not a tuning-log entry, skipped")


def read_database(folder: str | Path, log: Callable[[str], None]) -> ms.database.Database:
    """The tuning log `folder` as an in-memory database (what `compile` applies); the folder is
    only read."""
    entries = read_log(folder, log)
    confirmed = read_confirmed(folder, log)
    database = ms.database.MemoryDatabase(module_equality=MODULE_EQUALITY)
    committed = {index: database.commit_workload(workload.mod) for index, (workload, _) in entries.workloads.items()}
    chosen = {}  # workload index → its confirmed record
    for index, (workload, _) in entries.workloads.items() if confirmed else ():
        value = confirmed.get(workload_key(workload))
        record = None if value is None else confirmed_record(value, workload)
        if value is not None and record is None:
            log(f"warning: {Path(folder) / CONFIRMED}: the choice for workload {index} does not read, skipped")
        if record is not None:
            chosen[index] = record
    records = [(index, record) for index, record, _ in entries.records if index not in chosen]
    for index, record in [*records, *chosen.items()]:
        database.commit_tuning_record(
            ms.database.TuningRecord(
                record.trace, committed[index], record.run_secs, record.target, record.args_info
            )
        )
    return database


def workload_key(workload: ms.database.Workload) -> str:
    """A workload's key in `confirmed.json`: its structural hash, as MetaSchedule writes it."""
    return str(workload.as_json()[0])


def record_json(record: ms.database.TuningRecord) -> list:
    """`record` as the JSON value a line of MetaSchedule's JSON database holds for it (its own
    serialisation, through a scratch database: the trace's values are TVM objects)."""
    with tempfile.TemporaryDirectory(prefix="tvmbits-record-") as work:
        database = ms.database.JSONDatabase(str(Path(work) / WORKLOADS), str(Path(work) / RECORDS),
                                            module_equality=MODULE_EQUALITY)
        workload = database.commit_workload(record.workload.mod)
        database.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, record.run_secs,
                                                               record.target, record.args_info))
        line = (Path(work) / RECORDS).read_text().strip().splitlines()[-1]
    return json.loads(line)[1]


def confirmed_record(value, workload: ms.database.Workload) -> ms.database.TuningRecord | None:
    """The record of `workload` that `value`, its entry in `confirmed.json`, holds; None when it
    does not deserialize."""
    return _deserialize(lambda: ms.database.TuningRecord.from_json(value, workload))


def read_confirmed(folder: str | Path, log: Callable[[str], None]) -> dict:
    """`confirmed.json` of a tuning log: workload key → record JSON ({} when there is none, or
    with a warning when it does not read)."""
    path = Path(folder) / CONFIRMED
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log(f"warning: {path}: not a confirmed-choices file ({err}), ignored")
        return {}
    if not isinstance(value, dict):
        log(f"warning: {path}: not a confirmed-choices file (not a JSON object), ignored")
        return {}
    return value


def write_confirmed(folder: str | Path, confirmed: dict) -> None:
    """Write `confirmed` (workload key → record JSON, all of the log's choices) as the log's
    `confirmed.json`, replacing the file whole (written beside it, then renamed): an
    interrupted write leaves the old one."""
    _replace(Path(folder) / CONFIRMED, [json.dumps(confirmed, separators=(",", ":"))])


def repair(folder: str | Path, log: Callable[[str], None]) -> int:
    """Rewrite the tuning log `folder` without its bad lines (records renumbered to the workloads
    kept), after copying each file to `<file>.bak`; the number of lines dropped."""
    folder = Path(folder)
    entries = read_log(folder, log)
    if not entries.bad:
        return 0
    renumber = {old: new for new, old in enumerate(sorted(entries.workloads))}
    for name in (WORKLOADS, RECORDS):
        if (folder / name).exists():
            shutil.copy2(folder / name, folder / (name + ".bak"))
    _replace(folder / WORKLOADS, [line for _, (_, line) in sorted(entries.workloads.items())])
    _replace(folder / RECORDS, [_renumbered(line, renumber[index]) for index, _, line in entries.records])
    log(f"repaired {folder}: dropped {entries.bad} bad lines; the old files are kept as *.bak")
    return entries.bad


def _renumbered(line: str, index: int) -> str:
    value = json.loads(line)
    if value[0] == index:
        return line
    return json.dumps([index, value[1]], separators=(",", ":"))


def _replace(path: Path, lines: list[str]) -> None:
    """Replace `path` with `lines`, written beside it and renamed: a failed write leaves the old
    file and no partial one."""
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text("".join(line + "\n" for line in lines))
        partial.replace(path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise TuningLogError(f"{path}: cannot write it ({err.strerror or err})") from None


class TuningLogWriter:
    """MetaSchedule's JSON database over a private copy of a tuning log's valid entries; `flush`
    appends the lines it has added since to the log itself (whole lines, one write per file,
    workload indices translated), so the log only ever grows by whole lines."""

    def __init__(self, folder: str | Path, log: Callable[[str], None]):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TuningLogError(f"{folder}: cannot make the tuning log folder ({err.strerror or err})") from None
        entries = read_log(self.folder, log)
        self._work = tempfile.TemporaryDirectory(prefix="tvmbits-log-")
        work = Path(self._work.name)
        self._to_log = sorted(entries.workloads)  # private workload index → the log's
        private = {index: position for position, index in enumerate(self._to_log)}
        (work / WORKLOADS).write_text("".join(line + "\n" for _, (_, line) in sorted(entries.workloads.items())))
        (work / RECORDS).write_text(
            "".join(_renumbered(line, private[index]) + "\n" for index, _, line in entries.records)
        )
        self._next_index = entries.workload_lines
        self._done = {WORKLOADS: (work / WORKLOADS).stat().st_size, RECORDS: (work / RECORDS).stat().st_size}
        self.database = ms.database.JSONDatabase(
            str(work / WORKLOADS), str(work / RECORDS), module_equality=MODULE_EQUALITY
        )

    def flush(self) -> None:
        """Append what MetaSchedule wrote since the last flush to the log."""
        work = Path(self._work.name)
        new_workloads = self._new_lines(work / WORKLOADS)
        for _ in new_workloads:
            self._to_log.append(self._next_index)
            self._next_index += 1
        new_records = [
            _renumbered(line, self._to_log[json.loads(line)[0]]) for line in self._new_lines(work / RECORDS)
        ]
        _append(self.folder / WORKLOADS, new_workloads)
        _append(self.folder / RECORDS, new_records)

    def _new_lines(self, path: Path) -> list[str]:
        with open(path, "rb") as f:
            f.seek(self._done[path.name])
            data = f.read()
        end = data.rfind(b"\n") + 1  # whole lines only; a line still being written waits
        self._done[path.name] += end
        return [line for line in data[:end].decode().splitlines() if line.strip()]

    def close(self) -> None:
        self._work.cleanup()


def _append(path: Path, lines: list[str]) -> None:
    """Append whole lines with one write (after a newline if the file ends in a cut line)."""
    if not lines:
        return
    data = "".join(line + "\n" for line in lines).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and _last_byte(path) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


@derived_object
class FlushToLog(ms.measure_callback.PyMeasureCallback):
    """After each measured batch (once MetaSchedule has recorded it), append it to the log."""

    def __init__(self, writer: TuningLogWriter):
        super().__init__()
        self.writer = writer

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        self.writer.flush()


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
