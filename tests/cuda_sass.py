"""CUDA device code of a compiled model, and its SASS, read without a GPU.

TVM 0.27 puts CUDA C source into a CUDA build's library and compiles it only when the library is
loaded, which needs a CUDA driver; so the source is taken from the build itself (the executable
`tvmbits.compile` exports), compiled here with nvcc for one architecture (`-cubin -arch sm_XX`)
and disassembled with nvdisasm (the nvidia-cuda-nvdisasm wheel, or one on PATH).
"""

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import tvmbits
from tvmbits import compiler


def nvdisasm() -> str | None:
    """nvdisasm on PATH, else the one of the nvidia-cuda-nvdisasm wheel; None if neither."""
    found = shutil.which("nvdisasm")
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for root in nvidia.__path__:
        for path in sorted(glob.glob(os.path.join(root, "*", "bin", "nvdisasm"))):
            if os.access(path, os.X_OK):
                return path
    return None


def cuda_source(model, arch: str, **options) -> tuple[str, dict]:
    """The CUDA C source of `model` compiled for the `cuda` profile at `arch`, and the artifact's
    metadata: `tvmbits.compile` as it is, with the executable it exports kept on the way."""
    kept = []
    export = compiler._export

    def keep(executable, library, profile):
        kept.append(executable)
        export(executable, library, profile)

    compiler._export = keep
    try:
        art = tvmbits.compile(model, "cuda", arch=arch, **options)
    finally:
        compiler._export = export
    (executable,) = kept
    sources = [m.inspect_source() for m in _modules(executable.mod) if m.kind == "cuda"]
    assert len(sources) == 1, [m.kind for m in _modules(executable.mod)]
    return sources[0], art.metadata


def _modules(module) -> list:
    """`module` and every module it imports, depth first."""
    return [module] + [m for imported in module.imports for m in _modules(imported)]


def sass(source: str, arch: str, folder: Path) -> dict[str, str]:
    """SASS of each `__global__` kernel of `source` compiled for `arch`: {kernel name: text}."""
    cu, cubin = folder / f"kernels_{arch}.cu", folder / f"kernels_{arch}.cubin"
    cu.write_text(source)
    subprocess.run(["nvcc", "-cubin", f"-arch={arch}", "-w", "-o", str(cubin), str(cu)],
                   check=True, capture_output=True, text=True)
    text = subprocess.run([nvdisasm(), str(cubin)], check=True, capture_output=True, text=True).stdout
    kernels = {}
    for part in re.split(r"\n\s*\.text\.", text)[1:]:
        name = part.split(":", 1)[0].strip()
        kernels[name] = part
    return kernels


def kernels_by_function(kernels: dict[str, str]) -> dict[str, dict[str, str]]:
    """The kernels grouped by the PrimFunc they come from (TVM names them `<func>_kernel`,
    `<func>_kernel_1`, ...)."""
    grouped: dict[str, dict[str, str]] = {}
    for name, body in kernels.items():
        match = re.fullmatch(r"(.+)_kernel(_\d+)?", name)
        grouped.setdefault(match.group(1) if match else name, {})[name] = body
    return grouped
