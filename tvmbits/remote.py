"""Where a compiled model runs when not on this machine: a board, or a board from a tracker."""

import math
from dataclasses import dataclass

from tvmbits.errors import OptionError


@dataclass(frozen=True)
class Remote:
    """One board running `tvmbits board serve` at `rpc` ("HOST:PORT"), or a free board of `key`
    from the TVM RPC tracker at `tracker` ("HOST:PORT"). Connecting, and each call to the board,
    gives up after `timeout` seconds. `tvmbits.load`, `tvmbits tune` and `run` take one."""

    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None
    timeout: float = 30.0

    def __post_init__(self):
        if self.rpc and self.tracker:
            raise OptionError("give either --rpc or --tracker, not both")
        if not self.rpc and not self.tracker:
            raise OptionError("a remote needs --rpc HOST:PORT or --tracker HOST:PORT")
        if bool(self.tracker) != bool(self.key):
            raise OptionError("--tracker and --key go together")
        check_timeout(self.timeout)

    def describe(self) -> str:
        return f"board {self.rpc}" if self.rpc else f"board '{self.key}' from tracker {self.tracker}"


def check_timeout(timeout: float) -> None:
    """A `--timeout` is a positive, finite number of seconds (not 0, nan or inf)."""
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise OptionError(f"--timeout {timeout}: must be a positive, finite number of seconds")
