"""`tvmbits run` and `inspect` on this machine, as a user calls them: outputs written as
`<output name>.npy`, timings in text or one JSON object, a per-kernel profile, the metadata."""

import json

import numpy as np
import pytest

from tvmbits.cli import main


@pytest.fixture
def compiled(tiny, tmp_path):
    """The shared tiny_bnn artifact, seen from a folder of this test's own."""
    for name in ("bnn.tar", "x.npy"):
        (tmp_path / name).symlink_to(getattr(tiny, {"bnn.tar": "artifact", "x.npy": "input"}[name]))
    return tmp_path, tiny.expected


def test_json_report_and_output_files(compiled, capsys):
    folder, expected = compiled
    argv = ["run", str(folder / "bnn.tar"), "--input", f"input={folder / 'x.npy'}",
            "--output", str(folder / "out"), "--repeat", "5", "--json", "--profile"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"] == {"logits": str(folder / "out" / "logits.npy")}
    np.testing.assert_array_equal(np.load(report["outputs"]["logits"]), expected)
    timing = report["timing_ms"]
    assert timing["repeat"] == 5 and 0 < timing["median"] and timing["std"] >= 0
    assert timing["mean"] > 0
    kernels = [row["name"] for row in report["profile"]]
    assert any("bitserial_conv2d" in name for name in kernels) and any("bitserial_dense" in name for name in kernels)
    assert abs(sum(row["share"] for row in report["profile"]) - 1) < 1e-6


def test_text_report(compiled, capsys):
    folder, _ = compiled
    assert main(["run", str(folder / "bnn.tar"), "--input", str(folder / "x.npy"), "--repeat", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "logits: float32[1, 10]"
    assert lines[1].startswith("latency: mean ") and lines[1].endswith("over 3 runs")


def test_inspect_reports_layers_and_bytes(compiled, capsys):
    folder, _ = compiled
    assert main(["inspect", str(folder / "bnn.tar")]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["profile"] == "host" and meta["inputs"][0]["name"] == "input"
    assert [layer["kernel"] for layer in meta["layers"]] == ["float", "bitserial", "bitserial", "bitserial"]
    summary = meta["summary"]
    assert summary["lowbit_layers"] == 3 and summary["float_layers"][0]["name"] == "stem"
    assert summary["lowbit_weight_bytes_packed"] * 8 < summary["lowbit_weight_bytes_float"]
