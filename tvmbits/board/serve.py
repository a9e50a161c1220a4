"""`tvmbits board serve`: TVM's own RPC server, plus the functions tvmbits asks a board.

The server is `tvm.rpc.Server` unchanged (protocol, sessions, tracker registration); its
`server_init_callback` registers `tvmbits.board.machine`, `tvmbits.board.versions` and
`tvmbits.board.profile` (`board.profiler`) in the server's worker, and the session processes the
worker forks for each client inherit them. Needs only apache-tvm (with its RPC extras: psutil,
cloudpickle, tornado) and numpy on the board.

TVM RPC has no authentication: whoever reaches the port can upload and run code. The server binds
to loopback unless told otherwise, and says so when it binds wider.
"""

import ipaddress
import signal
import socket
import sys

from tvmbits.board import profiler
from tvmbits.errors import BoardError


def serve(host: str = "127.0.0.1", port: int = 9090, tracker: str | None = None, key: str | None = None) -> None:
    """Serve TVM RPC on `host`:`port` (exactly that port) until SIGINT or SIGTERM.

    With `tracker` (HOST:PORT) the server registers with that TVM rpc_tracker under `key`, and
    clients reach it through the tracker; without, clients connect directly.
    """
    from tvm import rpc

    if bool(tracker) != bool(key):
        raise BoardError("--tracker and --key go together")
    tracker_addr = address("--tracker", tracker) if tracker else None
    if not 0 < port < 65536:
        raise BoardError(f"--port {port}: must be 1-65535")
    if not _is_loopback(host):
        print(
            f"tvmbits: warning: TVM RPC has no authentication: anyone who can reach {host}:{port} "
            "can run code on this machine",
            file=sys.stderr,
        )
    _probe_bind(host, port)
    if tracker_addr:
        _probe_tracker(tracker, tracker_addr)
    # SIGTERM ends the server like Ctrl-C does, so that its worker processes are ended too
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = rpc.Server(
        host, port, port + 1, tracker_addr=tracker_addr, key=key or "", server_init_callback=profiler.register
    )
    try:
        via = f", registered as '{key}' with tracker {tracker}" if tracker else ""
        print(f"tvmbits: serving TVM RPC on {host}:{server.port}{via}", flush=True)
        server.proc.join()
        raise BoardError(f"the TVM RPC server on {host}:{port} stopped")
    finally:
        server.terminate()


def _probe_bind(host: str, port: int) -> None:
    """Fail with one line if `host`:`port` cannot be bound (TVM's worker would only traceback)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise BoardError(f"--host {host}: {err.strerror}") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise BoardError(f"cannot serve on {host}:{port}: {err.strerror}") from None


def _probe_tracker(tracker: str, tracker_addr: tuple[str, int]) -> None:
    """Fail with one line if the tracker does not answer (TVM's server would retry, then stop
    listening, while this process went on waiting)."""
    try:
        socket.create_connection(tracker_addr, timeout=10).close()
    except OSError as err:
        raise BoardError(f"tracker {tracker} is unreachable: {err.strerror or err}") from None


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def address(flag: str, value: str) -> tuple[str, int]:
    """`value` given to `flag` as (host, port); a UserError unless it is HOST:PORT."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BoardError(f"{flag} {value}: expected HOST:PORT")
    return host, int(port)
