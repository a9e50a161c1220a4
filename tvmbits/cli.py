"""`tvmbits` command line: argument parsing over the Python API (`tvmbits.compile`,
`tvmbits.load`, `tvmbits.Remote`) and the tuner and board modules.

Every failure the user can fix (a `UserError` the library raises) prints one line on stderr
and exits with code 2; Ctrl-C prints "tvmbits: interrupted" and exits with code 130.
"""

import argparse
import contextlib
import json
import signal
import sys
import threading

from tvmbits.errors import OptionError, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise OptionError(f"{self.prog}: {message}")


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = None
    with _noting_sigint() as interrupted:
        try:
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help()
                return 2
            return args.handler(args)
        except UserError as err:
            if getattr(args, "verbose", False) and err.detail:
                print(err.detail, file=sys.stderr)
            print(f"tvmbits: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line, always
            return 2
        except (KeyboardInterrupt, Exception) as err:
            if not (interrupted or isinstance(err, KeyboardInterrupt)):
                raise
            print("tvmbits: interrupted", file=sys.stderr)
            return 130


@contextlib.contextmanager
def _noting_sigint():
    """A list that becomes non-empty when SIGINT arrives, which still raises KeyboardInterrupt.
    TVM's C++ turns a KeyboardInterrupt raised inside a Python callback (a pass, a legalizer)
    into a RuntimeError; after a Ctrl-C that error means interrupted, not a failure. Where
    SIGINT is ignored (a background job) or handled by someone else, nothing changes."""
    seen: list = []
    on_main = threading.current_thread() is threading.main_thread()
    if not on_main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield seen
        return

    def on_sigint(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, on_sigint)
        yield seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tvmbits", description="Compile, run and inspect low-bit networks.")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    compile_ = commands.add_parser("compile", help="compile an ONNX model into model.tar")
    compile_.add_argument(
        "model", help="ONNX file: float, QONNX (Brevitas export) or QDQ; quantizers in it set the bits"
    )
    compile_.add_argument("--target", default="host", help="profile name (targets/; default: this machine) or .toml file")
    compile_.add_argument("--arch", help="CUDA profiles: GPU architecture to build for (sm_80, sm_89, sm_90; "
                          "default: this machine's GPU, else the profile's fallback_arch)")
    compile_.add_argument("-o", "--output", default="model.tar", help="artifact to write")
    compile_.add_argument(
        "--force", action="store_true", help="overwrite an existing output that is not a tvmbits artifact"
    )
    _plan_options(compile_)
    compile_.add_argument("--calibrate", nargs="+", default=[], metavar="NPY", help="calibration samples")
    compile_.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME=D1,D2,...",
        help="fix an input's symbolic dimensions",
    )
    compile_.add_argument("--verbose", action="store_true", help="with an error, print what TVM said in full")
    tuning = compile_.add_mutually_exclusive_group()
    tuning.add_argument("--tuning-log", metavar="DIR", help="apply this tuning log (default: the user's from `tune`, else the shipped one)")
    tuning.add_argument("--no-tuning", action="store_true", help="use the untuned default schedules")
    compile_.add_argument("--dump-ir", metavar="DIR", help="write the module after each compile phase into DIR")
    compile_.set_defaults(handler=_compile)

    tune = commands.add_parser("tune", help="tune a model's low-bit kernels into a tuning log")
    tune.add_argument("model", help="ONNX file")
    tune.add_argument("--target", default="host", help="profile name (targets/; default: this machine) or .toml file")
    tune.add_argument("--arch", help="CUDA profiles: GPU architecture to tune for (default: this machine's GPU)")
    tune.add_argument("--trials", type=int, help="measurements in all (default: the profile's)")
    tune.add_argument(
        "--log", help="tuning log folder to append to (default: ~/.cache/tvmbits/tuning_logs/<profile>, "
        "<profile>-<arch> for CUDA)"
    )
    _remote_options(tune, "measure on")
    _plan_options(tune)
    tune.add_argument(
        "--repair", action="store_true",
        help="drop the log's lines that do not read (the old files are kept as *.bak)",
    )
    tune.add_argument("--verbose", action="store_true", help="with an error, print what TVM said in full")
    tune.set_defaults(handler=_tune)

    run = commands.add_parser("run", help="run model.tar here or on a board")
    run.add_argument("artifact")
    run.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    run.add_argument("--output", metavar="DIR", help="write <output name>.npy files here")
    run.add_argument("--repeat", type=int, default=10, help="timed runs (0: no timing)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--profile", action="store_true", help="print a per-layer time table")
    _remote_options(run, "run on")
    run.set_defaults(handler=_run)

    check = commands.add_parser(
        "check",
        help="run each low-bit layer's kernels, built for the target, on an emulated CPU of it "
        "(qemu user mode) and compare with the integer reference; exit 0 when all pass",
    )
    check.add_argument("model", help="ONNX file, as for compile")
    check.add_argument("--target", default="armv7", help="profile with a qemu_cpu (armv7, arm64) or .toml file")
    check.add_argument("--seed", type=int, default=0, help="seed of the layers' random inputs")
    _plan_options(check)
    check.set_defaults(handler=_check)

    inspect = commands.add_parser(
        "inspect",
        help="print an artifact's metadata as JSON: per layer the kernel, the bits and where they "
        "came from (origin, found), why a layer stayed float, weight bytes before/after packing",
    )
    inspect.add_argument("artifact")
    inspect.set_defaults(handler=_inspect)

    board = commands.add_parser("board", help="serve TVM RPC on a board, or emulate a board here")
    board_commands = board.add_subparsers(
        dest="board_command", metavar="{serve,emulate}", parser_class=_Parser, required=True
    )
    serve = board_commands.add_parser("serve", help="serve TVM RPC on this machine (needs only apache-tvm)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (TVM RPC has no authentication)")
    serve.add_argument("--port", type=int, default=9090, help="port to listen on")
    serve.add_argument("--tracker", metavar="HOST:PORT", help="register with this TVM RPC tracker")
    serve.add_argument("--key", help="the board key to register under (with --tracker)")
    serve.set_defaults(handler=_board_serve)
    emulate = board_commands.add_parser("emulate", help="run an emulated board on this machine (qemu-user, root)")
    emulate.add_argument("arch", metavar="profile", help="an Arm board profile: arm64, rpi3, rpi4, rpi5 or a .toml")
    emulate.add_argument("--port", type=int, default=9090, help="port on 127.0.0.1 to serve TVM RPC on")
    emulate.set_defaults(handler=_board_emulate)
    return parser


def _plan_options(command) -> None:
    """The options that decide each layer's bits and kernel (compile, tune and check alike)."""
    command.add_argument("--wbits", type=int, help="post-training weight bits (1-8) for float layers")
    command.add_argument("--abits", type=int, help="post-training activation bits (1-8)")
    command.add_argument("--all-layers", action="store_true", help="quantize first and last layers too")
    command.add_argument("--kernel", default="auto", choices=["auto", "bitserial", "subbyte"])


def _remote_options(command, verb: str) -> None:
    """The options naming a board (`tvmbits.Remote`), for run and tune."""
    command.add_argument("--rpc", metavar="HOST:PORT", help=f"{verb} the board `tvmbits board serve` runs there")
    command.add_argument("--tracker", metavar="HOST:PORT", help=f"{verb} a free board from this TVM RPC tracker")
    command.add_argument("--key", help="the board key to ask the tracker for")
    command.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a board, per step")


def _tune(args) -> int:
    from tvmbits.compiler import CompileOptions
    from tvmbits.targets import profile as profiles
    from tvmbits.tune import tune_model
    from tvmbits.tuning_log import start_user_log

    remote = _remote(args)
    profile = profiles.load(args.target, args.arch)
    options = CompileOptions(
        target=args.target, arch=args.arch, wbits=args.wbits, abits=args.abits, all_layers=args.all_layers,
        kernel=args.kernel,
    )
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log_dir = args.log or str(start_user_log(profile.log_name, log))
    trials = args.trials if args.trials is not None else profile.tuning_trials
    tune_model(
        args.model, options, log_dir, trials, remote=remote, log=log, repair=args.repair,
    )
    print(f"tuning log: {log_dir}")
    return 0


def _compile(args) -> int:
    import tvmbits
    from tvmbits.artifact import check_output_path

    check_output_path(args.output, [args.model], args.force)  # before the slow work
    artifact = tvmbits.compile(
        args.model,
        args.target,
        arch=args.arch,
        wbits=args.wbits,
        abits=args.abits,
        all_layers=args.all_layers,
        kernel=args.kernel,
        calibrate=args.calibrate,
        input_shapes=dict(_shape(item) for item in args.input_shape),
        tuning_log=args.tuning_log,
        use_tuning=not args.no_tuning,
        dump_ir=args.dump_ir,
        log=lambda m: print(m, file=sys.stderr),
    )
    artifact.save(args.output, force=args.force)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _shape(item: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = item.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise OptionError(f"--input-shape {item}: expected NAME=D1,D2,... with positive integers")
    return name, shape


def _run(args) -> int:
    import tvmbits
    from tvmbits import deploy
    from tvmbits.artifact import open_artifact

    if args.repeat < 0:
        raise OptionError(f"--repeat {args.repeat}: must be 0 or more")
    remote = _remote(args)
    if args.output:
        deploy.check_output_folder(args.output)
    art = open_artifact(args.artifact)
    inputs = deploy.read_inputs(args.input, art.metadata, log=_warn)
    model = tvmbits.load(art, remote)
    try:
        outputs = model(**inputs)
        timing = model.benchmark(args.repeat, inputs, log=_warn) if args.repeat else None
        profile = model.profile(inputs) if args.profile else None
    finally:
        model.close()
    paths = deploy.write_outputs(outputs, args.output) if args.output else {}
    if args.json:
        report = {"outputs": paths, "timing_ms": timing}
        if profile is not None:
            report["profile"] = profile
        print(json.dumps(report))
        return 0
    for name, value in outputs.items():
        where = f" -> {paths[name]}" if name in paths else ""
        print(f"{name}: {value.dtype}{list(value.shape)}{where}")
    if timing:
        t = timing
        print(
            f"latency: mean {t['mean']:.3f} ms, median {t['median']:.3f} ms, "
            f"std {t['std']:.3f} ms over {t['repeat']} runs"
        )
    if profile:
        width = max(len(row["name"]) for row in profile)
        print(f"{'kernel':<{width}} {'calls':>5} {'ms/run':>9} {'share':>6}")
        for row in profile:
            print(f"{row['name']:<{width}} {row['calls']:>5} {row['ms']:9.3f} {row['share']:6.1%}")
    return 0


def _remote(args):
    """The `Remote` that --rpc or --tracker/--key/--timeout name, or None for this machine."""
    from tvmbits.remote import Remote, check_timeout

    if not args.rpc and not args.tracker:
        if args.key:
            raise OptionError("--key needs --tracker")
        check_timeout(args.timeout)
        return None
    return Remote(rpc=args.rpc, tracker=args.tracker, key=args.key, timeout=args.timeout)


def _check(args) -> int:
    from tvmbits.check import check_model
    from tvmbits.compiler import CompileOptions

    options = CompileOptions(
        target=args.target, wbits=args.wbits, abits=args.abits, all_layers=args.all_layers, kernel=args.kernel
    )
    results = check_model(args.model, options, args.seed, log=lambda m: print(m, file=sys.stderr, flush=True))
    for result in results:
        print(result.line())
    failed = [result.name for result in results if not result.passed]
    print(f"{len(results) - len(failed)} of {len(results)} low-bit layers pass" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _board_serve(args) -> int:
    from tvmbits.board import serve

    serve.serve(args.host, args.port, tracker=args.tracker, key=args.key)
    return 0


def _board_emulate(args) -> int:
    from tvmbits.board import emulate

    emulate.serve(args.arch, args.port, log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


def _inspect(args) -> int:
    from tvmbits.artifact import open_artifact

    meta = open_artifact(args.artifact).metadata
    layers = meta["layers"]
    lowbit = [layer for layer in layers if layer["kernel"] != "float"]
    meta["summary"] = {
        "layers": len(layers),
        "lowbit_layers": len(lowbit),
        "float_layers": [
            {"name": l["name"], "reason": l["reason"], "found": l.get("found")}
            for l in layers if l["kernel"] == "float"
        ],
        "lowbit_weight_bytes_float": sum(l["weight_bytes_float"] for l in lowbit),
        "lowbit_weight_bytes_packed": sum(l["weight_bytes_packed"] for l in lowbit),
    }
    print(json.dumps(meta, indent=2))
    return 0
