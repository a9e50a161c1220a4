import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

# tests import their model builders as plain modules
sys.path.insert(0, str(Path(__file__).parent))

# `tune` and `compile` read and write the user's tuning logs under the cache folder: the tests
# use a fresh one, so that neither a developer's own logs nor the tests' leak across
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="tvmbits-test-cache-")

# pytest-xdist runs one worker per core: a one-thread TVM pool in each (and in the processes they
# start) keeps the cores from being oversubscribed; the tests check results, not speed
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
    os.environ.setdefault("TVM_NUM_THREADS", "1")

# Tiers (`-m unit`, `-m kernel`, `-m e2e`), by file; a file may also set its own `pytestmark`.
# unit: no model compiled, no kernel run; kernel: single kernels against the integer
# reference; e2e (every other file): whole models compiled and run, the CLI, boards, examples.
TIERS = {
    "unit": ("test_encoding", "test_kernel_choice", "test_targets", "test_artifact", "test_tuning_log_location",
             "test_pass_annotate_layers", "test_pass_plan_layers", "test_pass_lower_lowbit",
             "test_pass_fold_flatten_transpose"),
    "kernel": ("test_bitpack", "test_bitserial_ops", "test_subbyte_ops", "test_bipolar_padding", "test_cpu_schedule"),
}


# the test files that run the emulated arm64 board (its root file system takes about 5 min to build)
BOARD_FILES = ("test_board_emulated", "test_arm_subbyte")


def pytest_collection_finish(session):
    """Start building the emulated arm64 board's root file system in the background as soon as
    the tests are collected, when a selected test needs it and it is not built yet: the tests
    that need it then wait on the build's lock (`emulate.build`) instead of building it
    themselves, late in the run, while the other worker has finished."""
    from tvmbits.board import emulate

    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":  # one build, from the first worker
        return
    if os.geteuid() != 0 or not any(item.module.__name__ in BOARD_FILES for item in session.items):
        return
    if (emulate.cache_dir() / "boards" / "arm64").is_dir():
        return
    build = "from tvmbits.board import emulate; emulate.build('arm64', log=lambda message: None)"
    subprocess.Popen([sys.executable, "-c", build], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)


# the files whose module fixtures run longest (a tuning run killed, interrupted and resumed; two
# boards and a tracker; the armv7 harness build), scheduled first: last in name order, one of them
# would leave the other worker idle at the end of the run
FIRST = ("test_tune", "test_board_rpc", "test_check_armv7")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.module.__name__ not in FIRST)  # stable: the rest keeps its order
    tier_of = {name: tier for tier, names in TIERS.items() for name in names}
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in ("unit", "kernel", "e2e")):
            item.add_marker(getattr(pytest.mark, tier_of.get(item.module.__name__, "e2e")))


class TinyBNN:
    """tiny_bnn (onnx_models) compiled once for this machine (`host`) by `tvmbits compile`, for the tests that
    need some artifact: `model` (.onnx), `artifact` (.tar), `input` (.npy, dyadic) and the
    output ONNX Runtime gives on it. Read only: a test that changes a file copies it first."""

    def __init__(self, folder: Path):
        import numpy as np
        import onnx
        import onnxruntime as ort

        from onnx_models import dyadic_input, tiny_bnn
        from tvmbits.cli import main

        self.model, self.artifact, self.input = folder / "bnn.onnx", folder / "bnn.tar", folder / "x.npy"
        onnx.save(tiny_bnn(), self.model)
        assert main(["compile", str(self.model), "--target", "host", "-o", str(self.artifact)]) == 0
        x = dyadic_input([1, 3, 9, 9], seed=3)
        np.save(self.input, x)
        self.expected = ort.InferenceSession(str(self.model)).run(None, {"input": x})[0]


@pytest.fixture
def sigint_handler():
    """Sets SIGINT's handler for the test (Python's default unless the test passes another; a
    background test run has it ignored) and puts the previous one back afterwards. Handlers are
    installed from the main thread only: elsewhere the test is skipped."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed from the main thread only")
    previous = signal.getsignal(signal.SIGINT)
    yield lambda handler=signal.default_int_handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyBNN:
    return TinyBNN(tmp_path_factory.mktemp("tiny"))
