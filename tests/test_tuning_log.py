"""Tuning logs are only read by `compile` (a bad line is skipped with one warning naming the
file and line; nothing is rewritten), `tune` appends whole lines, and repairs only when asked
(`--repair`), keeping a backup."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

from tvmbits.errors import UserError
from tvmbits.tuning_log import (
    CONFIRMED, RECORDS, WORKLOADS, TuningLogWriter, read_database, read_log, record_json, repair, shipped_log,
    workload_key, write_confirmed,
)

BAD_WORKLOADS = ["garbage", '{"a":', "[1,2,3]"]
BAD_RECORDS = ["xx", '[0, {"trace": 5}]', "[7, []]", '[0, {"truncated": ']


@pytest.fixture
def small_log(tmp_path):
    """Two workloads of the shipped x86_64 log and three records of each (a valid log)."""
    shipped = shipped_log("x86_64")
    workloads = (shipped / WORKLOADS).read_text().splitlines()[:2]
    records = [line for line in (shipped / RECORDS).read_text().splitlines() if line.startswith(("[0,", "[1,"))]
    records = [r for r in records if r.startswith("[0,")][:3] + [r for r in records if r.startswith("[1,")][:3]
    folder = tmp_path / "log"
    folder.mkdir()
    (folder / WORKLOADS).write_text("".join(w + "\n" for w in workloads))
    (folder / RECORDS).write_text("".join(r + "\n" for r in records))
    return folder


def _spoil(folder):
    """Bad lines between the good ones: a bad workload line before workload 1 shifts its index."""
    workloads = (folder / WORKLOADS).read_text().splitlines()
    (folder / WORKLOADS).write_text("\n".join([workloads[0], *BAD_WORKLOADS, workloads[1]]) + "\n")
    records = (folder / RECORDS).read_text().splitlines()
    shifted = [line.replace("[1,", "[4,", 1) if line.startswith("[1,") else line for line in records]
    (folder / RECORDS).write_text("\n".join(BAD_RECORDS[:2] + shifted + BAD_RECORDS[2:]) + "\n")


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_valid_log_reads_whole(small_log):
    said = []
    entries = read_log(small_log, said.append)
    assert (len(entries.workloads), len(entries.records), entries.bad, said) == (2, 6, 0, [])
    assert len(read_database(small_log, said.append).get_all_tuning_records()) == 6


def test_the_shipped_log_reads_whole_in_a_fresh_process():
    """Records that tensorize (the sub-byte kernels' VNNI and SDOT schedules) deserialize only
    with their intrinsics registered; a fresh process reading the log must not drop them."""
    code = ("from tvmbits.tuning_log import read_log, shipped_log; said = []; "
            "e = read_log(shipped_log('x86_64'), said.append); print(len(e.records), e.bad, len(said))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 0 and out[1:] == ["0", "0"]


def _best(database, workload):
    return database.get_top_k(workload, 1)[0]


def test_a_confirmed_choice_replaces_the_workloads_faster_records(small_log):
    said = []
    database = read_database(small_log, said.append)
    workload = database.get_all_tuning_records()[0].workload
    slowest = database.get_top_k(workload, 3)[-1]
    slower = record_json(slowest)
    slower[1] = [1.0]  # a second: slower than every record of the log
    write_confirmed(small_log, {workload_key(workload): slower})
    confirmed = read_database(small_log, said.append)
    chosen = [r for r in confirmed.get_all_tuning_records() if workload_key(r.workload) == workload_key(workload)]
    assert [float(t) for t in chosen[0].run_secs] == [1.0] and len(chosen) == 1
    assert str(chosen[0].trace) == str(slowest.trace)
    others = len(database.get_all_tuning_records()) - 3
    assert len(confirmed.get_all_tuning_records()) == others + 1 and not said


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_confirmed_file_that_does_not_read_is_one_warning(small_log, content):
    (small_log / CONFIRMED).write_text(content)
    said = []
    assert len(read_database(small_log, said.append).get_all_tuning_records()) == 6
    assert len(said) == 1 and str(small_log / CONFIRMED) in said[0], said


def test_a_choice_for_a_workload_the_log_lacks_is_ignored(small_log):
    (small_log / CONFIRMED).write_text('{"123": "not a record"}')  # e.g. a model tuned into another log
    said = []
    assert len(read_database(small_log, said.append).get_all_tuning_records()) == 6 and not said


def test_a_failed_confirmed_write_keeps_the_old_file_and_leaves_no_partial(small_log, monkeypatch):
    write_confirmed(small_log, {"1": [1]})
    before = (small_log / CONFIRMED).read_text()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", full)
    with pytest.raises(UserError, match="confirmed.json: cannot write it"):
        write_confirmed(small_log, {"2": [2]})
    assert (small_log / CONFIRMED).read_text() == before
    assert not list(small_log.glob("*.partial"))


def test_a_confirmed_record_that_does_not_read_is_skipped_with_a_warning(small_log):
    said = []
    workload = read_database(small_log, said.append).get_all_tuning_records()[0].workload
    (small_log / CONFIRMED).write_text(json.dumps({workload_key(workload): [[], "garbage"]}))
    assert len(read_database(small_log, said.append).get_all_tuning_records()) == 6
    assert len(said) == 1 and "does not read" in said[0]


def test_reading_skips_bad_lines_with_one_warning_each_and_writes_nothing(small_log):
    _spoil(small_log)
    before = _snapshot(small_log)
    said = []
    database = read_database(small_log, said.append)
    assert _snapshot(small_log) == before
    assert len(database.get_all_tuning_records()) == 6
    expected = [f"{small_log / WORKLOADS}:{n}" for n in (2, 3, 4)]
    expected += [f"{small_log / RECORDS}:{n}" for n in (1, 2, 9, 10)]
    assert [line.split(": not a")[0].removeprefix("warning: ") for line in said] == expected, said


def test_repair_drops_bad_lines_keeps_a_backup_and_renumbers(small_log):
    _spoil(small_log)
    spoiled = _snapshot(small_log)
    assert repair(small_log, lambda m: None) == 7
    assert (small_log / (WORKLOADS + ".bak")).read_bytes() == spoiled[WORKLOADS]
    assert (small_log / (RECORDS + ".bak")).read_bytes() == spoiled[RECORDS]
    said = []
    entries = read_log(small_log, said.append)
    assert (sorted(entries.workloads), len(entries.records), entries.bad, said) == ([0, 1], 6, 0, [])
    assert sorted(json.loads(line)[0] for line in (small_log / RECORDS).read_text().splitlines()) == [0] * 3 + [1] * 3


def test_tune_appends_whole_lines_and_keeps_what_it_cannot_read(small_log):
    _spoil(small_log)
    spoiled = _snapshot(small_log)
    (small_log / RECORDS).write_bytes(spoiled[RECORDS].rstrip(b"\n"))  # a run killed mid-line
    writer = TuningLogWriter(small_log, lambda m: None)
    try:
        # MetaSchedule commits what it measures to the writer's database: here, copies of
        # workload 1's records (its index is 4 in the spoiled log, 1 in the private copy)
        records = [r for r in writer.database.get_all_tuning_records()][-2:]
        for record in records:
            writer.database.commit_tuning_record(record)
        writer.flush()
    finally:
        writer.close()
    grown = (small_log / RECORDS).read_bytes()
    assert grown.startswith(spoiled[RECORDS].rstrip(b"\n") + b"\n")  # the cut line ends; nothing lost
    assert (small_log / WORKLOADS).read_bytes() == spoiled[WORKLOADS]
    new = [json.loads(line) for line in grown[len(spoiled[RECORDS]):].decode().splitlines()]
    assert [index for index, _ in new] == [4, 4]
    entries = read_log(small_log, lambda m: None)
    assert len(entries.records) == 8 and entries.bad == 7


def test_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no such tuning log folder"):
        read_database(tmp_path / "absent", print)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot make the tuning log folder"):
        TuningLogWriter(tmp_path / "file", print)


def test_compile_reads_a_spoiled_log_without_touching_it(small_log, tmp_path, capsys):
    import onnx

    from onnx_models import tiny_bnn
    from tvmbits.cli import main

    _spoil(small_log)
    before = _snapshot(small_log)
    model = tmp_path / "bnn.onnx"
    onnx.save(tiny_bnn(), model)
    assert main(["compile", str(model), "-o", str(tmp_path / "m.tar"), "--tuning-log", str(small_log)]) == 0
    assert _snapshot(small_log) == before
    warnings = [line for line in capsys.readouterr().err.splitlines() if "not a tuning-log entry" in line]
    assert len(warnings) == 7
