"""Compile models into artifact files, and run artifacts on this machine, in the tests."""

import tvm
from tvm import relax

from tvmbits.artifact import open_artifact
from tvmbits.compiler import CompileOptions, compile_with
from tvmbits.passes.unpack_at_load import PREPARE


def compile_file(model, output, options: CompileOptions | None = None) -> dict:
    """Compile `model` (a path or ModelProto) into the artifact file `output`; its metadata."""
    art = compile_with(model, options or CompileOptions())
    art.save(output)
    return art.metadata


def run_local(artifact_path, *inputs):
    """The artifact's output (numpy; a tuple of them for several outputs) and its metadata."""
    art = open_artifact(artifact_path)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(art.library)), tvm.cpu())
    prepared = vm[PREPARE]()  # the weights unpacked at load, which main takes after the inputs
    out = vm["main"](*[tvm.runtime.tensor(x) for x in inputs], *prepared)
    if isinstance(out, tvm.runtime.Tensor):
        return out.numpy(), art.metadata
    return tuple(o.numpy() for o in out), art.metadata
