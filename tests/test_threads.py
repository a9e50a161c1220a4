"""TVM's thread pool gets one thread per physical core (`tvmbits.threads`), not TVM's x86-64
guess of half the hardware threads."""

import os
import subprocess
import sys

import pytest

from tvmbits import threads


def _topology(root, cores: dict[int, tuple[int, int]]) -> None:
    for cpu, (package, core) in cores.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")


@pytest.mark.parametrize(
    "cores, expected",
    [
        ({0: (0, 0), 1: (0, 1)}, 2),  # a VM's vCPUs, one thread per core
        ({0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0, 1)}, 2),  # two cores, two hardware threads each
        ({0: (0, 0), 1: (1, 0)}, 2),  # the same core id in two packages
    ],
)
def test_physical_cores_counts_distinct_cores_in_the_affinity(tmp_path, monkeypatch, cores, expected):
    _topology(tmp_path, cores)
    monkeypatch.setattr(threads, "TOPOLOGY", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(cores))
    assert threads.physical_cores() == expected


def test_physical_cores_without_topology_counts_the_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "TOPOLOGY", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    assert threads.physical_cores() == 3


def _pool_size(env: dict) -> int:
    """TVM's pool size in a fresh process after `size_pool`."""
    code = "import tvm; from tvmbits import threads; threads.size_pool(); print(tvm.get_global_func('runtime.NumThreads')())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


def test_size_pool_gives_tvm_one_thread_per_physical_core():
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    assert _pool_size(env) == threads.physical_cores()


def test_size_pool_keeps_the_users_setting():
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    assert _pool_size({**env, "TVM_NUM_THREADS": "1"}) == 1
