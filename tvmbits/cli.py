"""`tvmbits` command line: argument parsing only; the work lives in the modules it calls.

Every failure the user can fix prints one line on stderr and exits with code 2.
"""

import argparse
import json
import sys

from tvmbits.errors import OptionError, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise OptionError(f"{self.prog}: {message}")


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return args.handler(args)
    except UserError as err:
        print(f"tvmbits: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tvmbits: interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tvmbits", description="Compile, run and inspect low-bit networks.")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    compile_ = commands.add_parser("compile", help="compile an ONNX model into model.tar")
    compile_.add_argument(
        "model", help="ONNX file: float, QONNX (Brevitas export) or QDQ; quantizers in it set the bits"
    )
    compile_.add_argument("--target", default="x86_64", help="profile name (targets/) or .toml file")
    compile_.add_argument("-o", "--output", default="model.tar", help="artifact to write")
    compile_.add_argument("--wbits", type=int, help="post-training weight bits (1-8) for float layers")
    compile_.add_argument("--abits", type=int, help="post-training activation bits (1-8)")
    compile_.add_argument("--all-layers", action="store_true", help="quantize first and last layers too")
    compile_.add_argument("--kernel", default="auto", choices=["auto", "bitserial", "subbyte"])
    compile_.add_argument("--calibrate", nargs="+", default=[], metavar="NPY", help="calibration samples")
    compile_.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME=D1,D2,...",
        help="fix an input's symbolic dimensions",
    )
    tuning = compile_.add_mutually_exclusive_group()
    tuning.add_argument("--tuning-log", metavar="DIR", help="apply this tuning log (default: tuning_logs/<profile>)")
    tuning.add_argument("--no-tuning", action="store_true", help="use the untuned default schedules")
    compile_.set_defaults(handler=_compile)

    tune = commands.add_parser("tune", help="tune a model's low-bit kernels into a tuning log")
    tune.add_argument("model", help="ONNX file")
    tune.add_argument("--target", default="x86_64", help="profile name (targets/) or .toml file")
    tune.add_argument("--trials", type=int, help="measurements in all (default: the profile's)")
    tune.add_argument("--log", help="tuning log folder to append to (default: tuning_logs/<profile>)")
    tune.add_argument("--rpc", metavar="HOST:PORT", help="measure on the board `tvmbits board serve` runs there")
    tune.add_argument("--tracker", metavar="HOST:PORT", help="measure on boards from this TVM tracker")
    tune.add_argument("--key", help="the board key to ask the tracker for")
    tune.add_argument("--timeout", type=float, default=30.0, help="seconds a board may take per measurement")
    for flag in ("--wbits", "--abits"):
        tune.add_argument(flag, type=int, help="as for compile")
    tune.add_argument("--all-layers", action="store_true", help="as for compile")
    tune.add_argument("--kernel", default="auto", choices=["auto", "bitserial", "subbyte"])
    tune.set_defaults(handler=_tune)

    run = commands.add_parser("run", help="run model.tar here or on a board")
    run.add_argument("artifact")
    run.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    run.add_argument("--output", metavar="DIR", help="write <output name>.npy files here")
    run.add_argument("--repeat", type=int, default=10, help="timed runs (0: no timing)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--profile", action="store_true", help="print a per-layer time table")
    run.add_argument("--rpc", metavar="HOST:PORT", help="a board running `tvmbits board serve`")
    run.add_argument("--tracker", metavar="HOST:PORT", help="a TVM RPC tracker")
    run.add_argument("--key", help="the board key to ask the tracker for")
    run.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a board")
    run.set_defaults(handler=_run)

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


def _tune(args) -> int:
    from tvmbits.compiler import CompileOptions
    from tvmbits.targets import profile as profiles
    from tvmbits.tune import tune_model
    from tvmbits.tuning_log import default_log

    if bool(args.tracker) != bool(args.key):
        raise OptionError("--tracker and --key go together")
    if args.rpc and args.tracker:
        raise OptionError("--rpc and --tracker: measure on one board or on the tracker's, not both")
    profile = profiles.load(args.target)
    options = CompileOptions(
        target=args.target, wbits=args.wbits, abits=args.abits, all_layers=args.all_layers, kernel=args.kernel
    )
    log_dir = args.log or str(default_log(profile.name))
    trials = args.trials if args.trials is not None else profile.tuning_trials
    tune_model(
        args.model, options, log_dir, trials, tracker=args.tracker, key=args.key, timeout=args.timeout,
        log=lambda m: print(m, file=sys.stderr, flush=True), rpc=args.rpc,
    )
    print(f"tuning log: {log_dir}")
    return 0


def _compile(args) -> int:
    from tvmbits.compiler import CompileOptions, compile_model

    options = CompileOptions(
        target=args.target,
        wbits=args.wbits,
        abits=args.abits,
        all_layers=args.all_layers,
        kernel=args.kernel,
        calibrate=args.calibrate,
        input_shapes=dict(_shape(item) for item in args.input_shape),
        tuning_log=args.tuning_log,
        use_tuning=not args.no_tuning,
    )
    compile_model(args.model, args.output, options, log=lambda m: print(m, file=sys.stderr))
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
    from tvmbits import deploy, runtime
    from tvmbits.artifact import open_artifact

    if args.repeat < 0:
        raise OptionError(f"--repeat {args.repeat}: must be 0 or more")
    if args.rpc and args.tracker:
        raise OptionError("give either --rpc or --tracker, not both")
    if bool(args.tracker) != bool(args.key):
        raise OptionError("--tracker and --key go together")
    art = open_artifact(args.artifact)
    inputs = deploy.read_inputs(args.input, art.metadata)
    session = runtime.Session.open(rpc=args.rpc, tracker=args.tracker, key=args.key, timeout=args.timeout)
    try:
        result = deploy.run_artifact(art, inputs, session, repeat=args.repeat, profile=args.profile)
    finally:
        session.close()
    paths = deploy.write_outputs(result.outputs, args.output) if args.output else {}
    if args.json:
        report = {"outputs": paths, "timing_ms": result.timing_ms}
        if result.profile is not None:
            report["profile"] = result.profile
        print(json.dumps(report))
        return 0
    for name, value in result.outputs.items():
        where = f" -> {paths[name]}" if name in paths else ""
        print(f"{name}: {value.dtype}{list(value.shape)}{where}")
    if result.timing_ms:
        t = result.timing_ms
        print(
            f"latency: mean {t['mean']:.3f} ms, median {t['median']:.3f} ms, "
            f"std {t['std']:.3f} ms over {t['repeat']} runs"
        )
    if result.profile:
        width = max(len(row["name"]) for row in result.profile)
        print(f"{'kernel':<{width}} {'calls':>5} {'ms/run':>9} {'share':>6}")
        for row in result.profile:
            print(f"{row['name']:<{width}} {row['calls']:>5} {row['ms']:9.3f} {row['share']:6.1%}")
    return 0


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
