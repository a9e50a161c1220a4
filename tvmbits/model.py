"""A compiled model, loaded where it runs: `tvmbits.load(artifact, remote=None) -> Model`.

    model = tvmbits.load("model.tar")                     # this machine
    model = tvmbits.load("model-arm64.tar", tvmbits.Remote(rpc="192.168.1.20:9090"))
    outputs = model(input=x)                              # numpy in, numpy out, ONNX names
    model.benchmark(repeat=50)                            # {"mean", "median", "std", "repeat"}, ms
    model.profile()                                       # [{"name", "calls", "ms", "share"}]

Loading checks the artifact against the device first (`deploy.check_board`: CPU architecture,
TVM and tvmbits releases), then uploads the library (to a board) and starts the Relax VM there.
Inputs are checked against the artifact's input names, shapes and dtypes. Timings are measured
on the device (`time_evaluator`); `benchmark` and `profile` without inputs use seeded
standard-normal ones.
"""

import time as clock
from pathlib import Path
from typing import Callable

import numpy as np

from tvmbits import runtime
from tvmbits.artifact import Artifact, open_artifact
from tvmbits.deploy import check_board, random_inputs
from tvmbits.errors import InputError, OptionError
from tvmbits.remote import Remote

PROGRESS_AFTER_S = 2.0  # timing expected to take longer than this prints progress
PROGRESS_EVERY_S = 1.0  # one progress line about this often


class Model:
    """A compiled model loaded on this machine's device or a board's."""

    def __init__(self, artifact: Artifact, remote: Remote | None = None):
        self.artifact = artifact
        self.session = runtime.Session.open(remote)
        check_board(artifact.metadata, self.session)
        self.loaded = self.session.load(artifact.library, artifact.metadata["device"])

    @property
    def metadata(self) -> dict:
        return self.artifact.metadata

    @property
    def inputs(self) -> list[dict]:
        """[{"name", "shape", "dtype"}] in the model's order."""
        return self.metadata["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.metadata["outputs"]

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs, by name, of one run on `inputs` (one array per input name)."""
        values = runtime.run(self.session, self.loaded, self._arguments(inputs))
        return {spec["name"]: value for spec, value in zip(self.outputs, values)}

    def benchmark(
        self, repeat: int = 10, inputs: dict[str, np.ndarray] | None = None, log: Callable[[str], None] | None = None
    ) -> dict:
        """Latency over `repeat` timed runs (after one warm-up run), in ms, measured on the device.
        Timing expected to take over PROGRESS_AFTER_S runs in batches of about PROGRESS_EVERY_S,
        with a progress line to `log` after each (so that Ctrl-C ends it between batches)."""
        if repeat < 1:
            raise OptionError(f"repeat {repeat}: must be at least 1")
        args = self._arguments(inputs if inputs is not None else random_inputs(self.inputs))
        started = clock.monotonic()
        runtime.run(self.session, self.loaded, args)
        once = clock.monotonic() - started
        batch = repeat if repeat * once <= PROGRESS_AFTER_S else max(1, int(PROGRESS_EVERY_S / max(once, 1e-9)))
        if batch < repeat and log:
            log(f"timing {repeat} runs (about {repeat * once:.0f} s)")
        times: list[float] = []
        while len(times) < repeat:
            times += runtime.time(self.session, self.loaded, args, number=1, repeat=min(batch, repeat - len(times)))
            if batch < repeat and log:
                log(f"timed {len(times)}/{repeat} runs")
        times = np.array(times)
        return {"mean": float(times.mean()), "median": float(np.median(times)), "std": float(times.std()),
                "repeat": repeat}

    def profile(self, inputs: dict[str, np.ndarray] | None = None, runs: int = 5) -> list[dict]:
        """Per-kernel times inside the model's run ({name, calls, ms, share}; ms the median per run)."""
        args = self._arguments(inputs if inputs is not None else random_inputs(self.inputs))
        return runtime.profile(self.session, self.loaded, args, runs)

    def close(self) -> None:
        self.session.close()

    def _arguments(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = [spec["name"] for spec in self.inputs]
        unknown = [name for name in inputs if name not in names]
        if unknown:
            raise InputError(f"the model has no input '{unknown[0]}' (inputs: {', '.join(names)})")
        missing = [name for name in names if name not in inputs]
        if missing:
            raise InputError(f"missing input {', '.join(missing)}")
        args = []
        for spec in self.inputs:
            array = np.asarray(inputs[spec["name"]])
            if tuple(array.shape) != tuple(spec["shape"]):
                raise InputError(
                    f"input '{spec['name']}': shape {tuple(array.shape)} does not match the model's "
                    f"{tuple(spec['shape'])}"
                )
            if array.dtype != np.dtype(spec["dtype"]):
                raise InputError(f"input '{spec['name']}': dtype {array.dtype} does not match the model's {spec['dtype']}")
            args.append(array)
        return args


def load(artifact: "Artifact | str | Path", remote: Remote | None = None) -> Model:
    """Load a compiled model (an `Artifact` or a `model.tar` path) on this machine, or on the
    board `remote` names."""
    art = artifact if isinstance(artifact, Artifact) else open_artifact(artifact)
    return Model(art, remote)
