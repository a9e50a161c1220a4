"""Run a compiled artifact on this machine in the tests."""

import tvm
from tvm import relax

from tvmbits.artifact import open_artifact


def run_local(artifact_path, *inputs):
    """The artifact's outputs (numpy; the first if the model has several) and its metadata."""
    art = open_artifact(artifact_path)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(art.library)), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy(), art.metadata
