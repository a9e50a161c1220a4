"""How many threads TVM's CPU thread pool runs: one per physical core this process may use.

TVM sizes its pool once, when a parallel loop first runs, from TVM_NUM_THREADS (or
OMP_NUM_THREADS) and otherwise from the number of hardware threads, which on x86-64 it halves,
taking every core to run two of them. A virtual machine whose vCPUs are one thread per core
(`lscpu`: "Thread(s) per core: 1", common in the cloud) thus ran every tvmbits kernel on half
its cores. `size_pool` sets TVM_NUM_THREADS to the physical cores in this process's CPU
affinity, read from Linux's CPU topology, before the pool exists; a TVM_NUM_THREADS or
OMP_NUM_THREADS the user set is left as it is.
"""

import os
from pathlib import Path

TOPOLOGY = Path("/sys/devices/system/cpu")


def physical_cores() -> int:
    """Distinct (package, core) pairs among the CPUs this process may run on; without Linux's
    topology files, the number of those CPUs."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = TOPOLOGY / f"cpu{cpu}" / "topology"
        try:
            cores.add(tuple((topology / name).read_text().strip() for name in ("physical_package_id", "core_id")))
        except OSError:
            return len(cpus)
    return len(cores)


def size_pool() -> None:
    """Set TVM_NUM_THREADS to `physical_cores()` unless TVM_NUM_THREADS or OMP_NUM_THREADS is set.
    Has effect only before this process first runs a parallel TVM kernel (and, inherited, in
    the processes it starts afterwards: MetaSchedule's measuring workers, a board's sessions)."""
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())
