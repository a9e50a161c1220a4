"""Byte-level mutations of a small BNN and of its compiled artifact, fed to the CLI: every case
ends with exit code 0 or 2, at most one `tvmbits: error:` line (the last) and nothing else
but progress and warnings on stdout/stderr (no traceback, no TVM chatter), within a time limit,
and leaves no file behind but a finished output.

The default run takes a seeded few hundred cases; a model that still loads is taken through
TVM's importer and then stopped (the passes and the build see only what the importer made;
`-m slow` runs more cases through the whole compile)."""

import signal
import tarfile

import numpy as np
import onnx
import pytest

from onnx_models import tiny_bnn
from tvmbits.cli import main
from tvmbits.frontend import onnx as onnx_frontend

SEED = 12
CASE_LIMIT_S = 120  # a case running longer than this counts as a hang
PROGRESS = ("importing ", "lowering ", "building ", "applying ", "wrote ", "calibrating ", "warning: ")


class _Stop(BaseException):
    """Raised where a default-run case stops; not a UserError, so the CLI lets it through."""


class _Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise _Hang()


def mutate(data: bytes, rng: np.random.Generator, hot: list[tuple[int, int]]) -> bytes:
    """1 or 2 of: flip a bit, set a byte, delete, duplicate or insert a span, truncate; each at
    a position drawn from the `hot` spans (structure: headers, graph, metadata) or anywhere."""
    data = bytearray(data)
    for _ in range(rng.integers(1, 3)):
        if not data:
            break
        if hot and rng.random() < 0.5:
            start, end = hot[rng.integers(len(hot))]
            pos = int(rng.integers(start, max(start + 1, min(end, len(data)))))
        else:
            pos = int(rng.integers(len(data)))
        pos = min(pos, len(data) - 1)
        kind = rng.integers(6)
        span = int(rng.integers(1, 17))
        if kind == 0:
            data[pos] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            data[pos] = int(rng.integers(256))
        elif kind == 2:
            del data[pos : pos + span]
        elif kind == 3:
            data[pos:pos] = data[pos : pos + span]
        elif kind == 4:
            data[pos:pos] = bytes(rng.integers(0, 256, span, dtype=np.uint8))
        else:
            del data[pos:]
    return bytes(data)


def _model_spans(model: onnx.ModelProto, data: bytes) -> list[tuple[int, int]]:
    """The byte spans of a serialized model that are not weight data."""
    weights = sorted(
        (data.find(init.raw_data), data.find(init.raw_data) + len(init.raw_data))
        for init in model.graph.initializer if init.raw_data and data.find(init.raw_data) >= 0
    )
    spans, at = [], 0
    for start, end in weights:
        if start > at:
            spans.append((at, start))
        at = max(at, end)
    spans.append((at, len(data)))
    return spans


def _artifact_spans(path) -> list[tuple[int, int]]:
    """Tar headers and the metadata member of an artifact."""
    with tarfile.open(path) as tar:
        spans = [(m.offset, m.offset_data) for m in tar.getmembers()]
        spans += [(m.offset_data, m.offset_data + m.size) for m in tar.getmembers() if m.name == "metadata.json"]
    return spans


def _check(capfd, argv, rc_holder, folder, allowed):
    """Run `argv`; a list of what is wrong with how it ended (empty: fine)."""
    problems = []
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_LIMIT_S)
    try:
        rc = main(argv)
    except _Stop:
        rc = None
    except _Hang:
        return [f"no end within {CASE_LIMIT_S} s"]
    except BaseException as err:  # the defect this test looks for
        return [f"raised {type(err).__name__}: {str(err)[:200]}"]
    finally:
        signal.alarm(0)
    rc_holder.append(rc)
    out = capfd.readouterr()
    lines = [line for line in ((out.out if rc != 0 else "") + out.err).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("tvmbits: error: ")]
    others = [line for line in lines if not line.startswith(("tvmbits: error: ",) + PROGRESS)]
    if rc not in (0, 2, None):
        problems.append(f"exit code {rc}")
    if rc == 2 and errors != lines[-1:]:
        problems.append(f"not one final error line: {lines[-3:]}")
    if rc == 0 and errors:
        problems.append(f"error line with exit 0: {errors}")
    if others:
        problems.append(f"unexpected output: {others[:3]}")
    left = sorted(p.name for p in folder.iterdir())
    expected = sorted(allowed + (["out.tar"] if rc == 0 and argv[0] == "compile" else []))
    if left != expected:
        problems.append(f"files left: {left}")
    return problems


def _fuzz_models(capfd, tmp_path, cases, stop_after_import, monkeypatch):
    if stop_after_import:
        real = onnx_frontend.import_model

        def import_then_stop(*args, **kwargs):
            real(*args, **kwargs)
            raise _Stop()

        monkeypatch.setattr(onnx_frontend, "import_model", import_then_stop)
    model = tiny_bnn(channels=(2, 4, 4), size=5, classes=2)
    data = model.SerializeToString()
    hot = _model_spans(model, data)
    rng = np.random.default_rng(SEED)
    failures, codes = [], []
    for case in range(cases):
        folder = tmp_path / f"m{case}"
        folder.mkdir()
        (folder / "m.onnx").write_bytes(mutate(data, rng, hot))
        argv = ["compile", str(folder / "m.onnx"), "-o", str(folder / "out.tar"), "--no-tuning"]
        problems = _check(capfd, argv, codes, folder, ["m.onnx"])
        if problems:
            failures.append(f"model case {case}: {'; '.join(problems)}")
    return failures, codes


def _fuzz_artifacts(capfd, tmp_path, cases):
    model = tmp_path / "bnn.onnx"
    onnx.save(tiny_bnn(channels=(2, 4, 4), size=5, classes=2), model)
    artifact = tmp_path / "bnn.tar"
    assert main(["compile", str(model), "-o", str(artifact), "--no-tuning"]) == 0
    capfd.readouterr()
    data = artifact.read_bytes()
    hot = _artifact_spans(artifact)
    rng = np.random.default_rng(SEED + 1)
    failures, codes = [], []
    for case in range(cases):
        folder = tmp_path / f"a{case}"
        folder.mkdir()
        np.save(folder / "x.npy", np.ones((1, 3, 5, 5), np.float32))
        (folder / "a.tar").write_bytes(mutate(data, rng, hot))
        for argv in (["inspect", str(folder / "a.tar")],
                     ["run", str(folder / "a.tar"), "--input", str(folder / "x.npy"), "--repeat", "0"]):
            problems = _check(capfd, argv, codes, folder, ["a.tar", "x.npy"])
            if problems:
                failures.append(f"artifact case {case} ({argv[0]}): {'; '.join(problems)}")
    return failures, codes


def test_fuzzed_models(capfd, tmp_path, monkeypatch):
    failures, codes = _fuzz_models(capfd, tmp_path, 150, True, monkeypatch)
    assert not failures, "\n".join(failures)
    assert codes.count(2) > 50 and codes.count(None) > 5  # both refusals and models that import


def test_fuzzed_artifacts(capfd, tmp_path):
    failures, codes = _fuzz_artifacts(capfd, tmp_path, 150)
    assert not failures, "\n".join(failures)
    # most mutations are refused (the checksums); the few that are not (the tar's end padding,
    # header fields tar ignores) depend on how the library's size falls in the tar's records
    assert codes.count(2) > 100


@pytest.mark.slow
def test_fuzzed_models_compiled_whole(capfd, tmp_path, monkeypatch):
    failures, _ = _fuzz_models(capfd, tmp_path, 400, False, monkeypatch)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_fuzzed_artifacts_more(capfd, tmp_path):
    failures, _ = _fuzz_artifacts(capfd, tmp_path, 2000)
    assert not failures, "\n".join(failures)
