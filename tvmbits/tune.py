"""MetaSchedule tuning of a model's low-bit kernels (`tvmbits tune`).

Tasks are the fused PrimFuncs of the lowered model that hold one kernel (`schedules.cpu`
`is_tunable`); their design space is the default schedule with its register tile and its
unrolled reduction steps sampled (`schedule_lowbit(tunable=True)`); on CUDA targets the GEMM
forms' functions (`schedules.cuda.is_tunable`), scheduled with each thread-block tile of
`schedules.cuda.TUNED_TILES` (`design_spaces`). The space is searched by MetaSchedule's
evolutionary search with the XGBoost cost model, measured on this machine, on one board
(`--rpc`, a `tvmbits board serve`) or on boards from a TVM tracker, and recorded in a tuning log
(`tuning_log.py`) as each measurement finishes. On CPU targets each run first measures and
records every task's default schedule, which a compile then weighs against the tuned ones;
once the search has ended, each task's default, its previous choice and its fastest records
are re-measured against each other in rounds over all tasks, and the one with the lowest median
is the task's confirmed choice (`tuning_log.CONFIRMED`), which a compile applies.
"""

import contextlib
import functools
import importlib.util
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

import tvm
from tvm import rpc as tvm_rpc
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.utils import remove_build_dir

from tvmbits import candidate_build, threads, tuning_log
from tvmbits.board.serve import address
from tvmbits.compiler import CompileOptions, plan_model
from tvmbits.errors import BoardError, ModelError, OptionError
from tvmbits.passes import pipeline
from tvmbits.remote import Remote
from tvmbits.runtime import Session
from tvmbits.schedules import cuda as cuda_schedules
from tvmbits.schedules import register_intrinsics
from tvmbits.schedules.cpu import is_tunable, schedule_lowbit
from tvmbits.targets import profile as profiles

# The design spaces are small (tens of points): a population of 512 and 50 new candidates per
# round, MetaSchedule's defaults, cannot be met once a space is nearly measured, and the search
# then spins for minutes per round instead of ending.
SEARCH = dict(population_size=64, init_min_unmeasured=1, max_fail_count=2, genetic_num_iters=2)
BUILD_TIMEOUT = 60.0  # seconds for one candidate's build
CONFIRM_TOP = 3  # the fastest records of each task re-measured against its default
CONFIRM_ROUNDS = 5  # rounds of that re-measurement, each timing every candidate once
CONFIRM_MIN_ROUNDS = 3  # a candidate timed in fewer (its runs failed) is not chosen


def tune_model(
    model_path: str | Path,
    options: CompileOptions,
    log_dir: str | Path,
    trials: int,
    remote: Remote | None = None,
    log: Callable[[str], None] = lambda message: None,
    repair: bool = False,
) -> int:
    """Tune the low-bit kernels of `model_path` for `options.target` with `trials` measurements
    in all, on this machine or on the board(s) `remote` names, appending to the tuning log
    `log_dir` after each measured batch (lines of the log that do not read are skipped;
    `repair` drops them, keeping a backup); returns the number of tasks.

    Called from the main thread, it takes SIGINT over while it runs (`_interruptible`): a first
    Ctrl-C is logged and the tuning stops at its next safe point, raising KeyboardInterrupt; SIGINT
    is blocked in the main thread meanwhile, and an ignored SIGINT stays ignored."""
    if trials < 1:
        raise OptionError(f"--trials {trials}: must be at least 1")
    cuda = profiles.load(options.target, options.arch).device == "cuda"
    if cuda and remote is None and not tvm.cuda(0).exist:
        raise BoardError(f"tuning for {options.target} measures on a CUDA GPU, and this machine has none "
                         "(--rpc or --tracker measure on another machine's)")
    threads.size_pool()  # measured with the threads a deployed model runs (inherited by the runner's workers)
    if remote is not None and remote.rpc:
        Session.open(remote)  # one line, now, for a board that is not there (before the slow lowering)
    with _interruptible(log) as interrupted:
        try:
            return _tune(model_path, options, log_dir, trials, remote, log, repair, cuda, interrupted)
        except Exception:
            if interrupted:  # MetaSchedule's C++ turns a KeyboardInterrupt into another error
                raise KeyboardInterrupt from None
            raise


def _tune(model_path: str | Path, options: CompileOptions, log_dir: str | Path, trials: int,
          remote: Remote | None, log: Callable[[str], None], repair: bool, cuda: bool, interrupted: list) -> int:
    """`tune_model` once SIGINT is deferred (`_interruptible`): stops at the next safe point
    after `interrupted` becomes non-empty."""
    runner = _runner(remote, cuda)
    _stop_if(interrupted)
    planned = plan_model(model_path, options, log)
    target = planned.target
    mod = pipeline.run(planned.mod, pipeline.kernel_phases(target))
    tunable = cuda_schedules.is_tunable if cuda else is_tunable
    tasks = [
        task
        for task in ms.relax_integration.extract_tasks(mod, target)
        if tunable(task.dispatched[0]["main"])
    ]
    if not tasks:
        raise ModelError(f"{model_path}: no low-bit kernels to tune for {planned.profile.name}")
    _stop_if(interrupted)  # before the log is opened
    if repair and Path(log_dir).is_dir():
        tuning_log.repair(log_dir, log)
    register_intrinsics(target)  # the search replays the log's schedules
    writer = tuning_log.TuningLogWriter(log_dir, log)
    database = writer.database
    tuning_log.write_tuned_on(Path(log_dir), planned.profile.name)
    log(f"tuning {len(tasks)} kernels with {trials} trials in all; log: {log_dir}")
    _without_tvm_intrinsics()
    contexts = [
        ms.TuneContext(
            mod=task.dispatched[0],
            target=target,
            space_generator=ms.space_generator.ScheduleFn(
                functools.partial(_cuda_design_spaces if cuda else _design_space, target=target),
                sch_rules=[],
                postprocs=[],
                mutator_probs={ms.mutator.MutateTileSize(): 1.0},
            ),
            search_strategy=ms.search_strategy.EvolutionarySearch(**SEARCH),
            task_name=task.task_name,
            rand_state=index,
            num_threads=os.cpu_count(),
        ).clone()
        for index, task in enumerate(tasks)
    ]
    builder = _builder(planned.profile)
    with tempfile.TemporaryDirectory(prefix="tvmbits-tune-") as work_dir:
        progress = _Progress([task.task_name for task in tasks], trials, log, interrupted)
        defaults = {}
        try:
            if not cuda:
                defaults = _measure_defaults(tasks, target, builder, runner, database, log)
                writer.flush()
            _stop_if(interrupted)
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=[float(task.weight) for task in tasks],
                work_dir=work_dir,
                max_trials_global=trials,
                num_trials_per_iter=min(16, trials),
                builder=builder,
                runner=runner,
                database=database,
                cost_model="xgb",
                measure_callbacks=ms.measure_callback.MeasureCallback.create("default")
                + [tuning_log.FlushToLog(writer), progress],
                task_scheduler="gradient",
            )
            _stop_if(interrupted)
            if not cuda:
                confirmed = tuning_log.read_confirmed(log_dir, log)
                choices = _confirm(tasks, defaults, target, builder, runner, database, confirmed, log, interrupted)
                tuning_log.write_confirmed(log_dir, {**confirmed, **choices})
        finally:
            writer.flush()
            writer.close()
    if progress.done < trials:
        log(f"tune: stopped after {progress.done} trials: every candidate of these design spaces is measured")
    return len(tasks)


@contextlib.contextmanager
def _interruptible(log: Callable[[str], None]):
    """A list that becomes non-empty once SIGINT (Ctrl-C) arrives. The first SIGINT only says
    so (and logs that it did): raising KeyboardInterrupt wherever Python happens to run (inside
    MetaSchedule's C++ callbacks, some of which cannot pass an exception on, or while a worker
    pool is being started) can abort the process or leave the pool to be collected from one of
    its own threads. The tuning stops at the next safe point (`_stop_if`: between its phases,
    after each measured batch); MetaSchedule's C++ wraps that KeyboardInterrupt into a
    RuntimeError, which `tune_model` turns back into KeyboardInterrupt (the CLI: "tvmbits:
    interrupted", exit 130). A second SIGINT raises as soon as the main thread runs Python
    again (a build or measurement it waits for returns first).

    Ctrl-C at a terminal reaches the whole foreground process group, the build and measurement
    workers too, and a worker still importing TVM then prints a KeyboardInterrupt traceback. So
    the main thread blocks SIGINT meanwhile: the threads it starts, and the workers they start,
    inherit the block (the workers are killed or end with their pools). The signal lands on a
    thread that does not block it: at least the waiting thread started before the block, from
    which CPython has the main thread run the handler above. Off the main thread, or where
    SIGINT is ignored or handled outside Python, nothing is taken over (the list stays empty)."""
    seen: list = []
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield seen
        return

    def on_sigint(signum, frame):
        if seen:
            raise KeyboardInterrupt
        seen.append(signum)
        log("tune: stopping after the builds and measurements under way (Ctrl-C again to stop sooner)")

    done = threading.Event()
    receiver = threading.Thread(target=done.wait, name="tvmbits-sigint", daemon=True)
    receiver.start()
    try:  # each step undone in its own `finally`: a second Ctrl-C may raise between any two
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            signal.signal(signal.SIGINT, on_sigint)
            try:
                yield seen
            finally:
                signal.signal(signal.SIGINT, previous)  # a SIGINT from here on is the caller's
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    finally:
        done.set()
        receiver.join()


def _stop_if(interrupted: list) -> None:
    if interrupted:
        raise KeyboardInterrupt


def _measure_defaults(tasks: list, target: tvm.target.Target, builder: ms.builder.Builder,
                      runner: ms.runner.Runner, database: ms.database.Database,
                      log: Callable[[str], None]) -> dict[int, ms.database.TuningRecord]:
    """Measure each task's default schedule (`schedule_lowbit`) the way MetaSchedule measures its
    candidates and record it in the log beside them, so that a tuned schedule replaces the
    default only where it measures faster (`_confirm`); task index → the default's record."""
    schedules = []
    for task in tasks:
        sch = tvm.s_tir.Schedule(task.dispatched[0])
        schedule_lowbit(sch, target)
        schedules.append(sch)
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for sch in schedules])
    measured = [(index, task, sch, result) for index, (task, sch, result) in enumerate(zip(tasks, schedules, built))
                if result.error_msg is None]
    args = [ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True) for _, _, sch, _ in measured]
    futures = runner.run([
        ms.runner.RunnerInput(result.artifact_path, "cpu", info)
        for (_, _, _, result), info in zip(measured, args)
    ])
    defaults = {}
    for (index, task, sch, built_result), info, future in zip(measured, args, futures):
        result = future.result()
        remove_build_dir(built_result.artifact_path)
        if result.error_msg or not result.run_secs:
            continue
        workload = database.commit_workload(task.dispatched[0])
        record = ms.database.TuningRecord(sch.trace, workload, result.run_secs, target, info)
        database.commit_tuning_record(record)
        defaults[index] = record
        log(f"tune: default schedule of {task.task_name}: {_mean_seconds(result.run_secs) * 1e3:.4f} ms")
    return defaults


def _confirm(tasks: list, defaults: dict, target: tvm.target.Target, builder: ms.builder.Builder,
             runner: ms.runner.Runner, database: ms.database.Database, confirmed: dict,
             log: Callable[[str], None], interrupted: list) -> dict:
    """Each task's default schedule, its current confirmed choice (`confirmed`: workload key →
    record JSON) and its CONFIRM_TOP fastest records, re-measured in CONFIRM_ROUNDS rounds that
    each time every candidate of every task once, in a shuffled order: the task's choice
    (`_choose`), by workload key (`tuning_log.CONFIRMED`), its record holding the rounds' times.
    The search times each candidate once, and on a machine whose speed drifts the fastest of
    hundreds of single timings is mostly the luckiest: a fresh 200-trial log ran slower than the
    default schedules (benchmarks/tuning.md). A task none of whose candidates is timed in enough
    rounds keeps its choice, with a warning. Stops (KeyboardInterrupt) before the builds and
    between rounds once `interrupted`, choosing nothing."""
    workloads = [database.commit_workload(task.dispatched[0]) for task in tasks]
    keys = [tuning_log.workload_key(workload) for workload in workloads]
    candidates = []  # (task index, record, measure candidate)
    for index, (task, workload, key) in enumerate(zip(tasks, workloads, keys)):
        previous = None if key not in confirmed else tuning_log.confirmed_record(confirmed[key], workload)
        seen = set()
        for record in [defaults.get(index), previous, *database.get_top_k(workload, CONFIRM_TOP)]:
            trace = None if record is None else str(record.trace.as_json())
            if trace is None or trace in seen:
                continue
            seen.add(trace)
            try:
                candidates.append((index, record, record.as_measure_candidate()))
            except Exception as err:  # a trace that no longer replays on this workload
                log(f"tune: {task.task_name}: a recorded schedule does not replay, skipped ({_last_line(str(err))})")
    _stop_if(interrupted)
    log(f"tune: confirming: building {len(candidates)} schedules of {len(tasks)} kernels")
    built = builder.build([ms.builder.BuilderInput(c.sch.mod, target) for _, _, c in candidates])
    ready = [i for i, result in enumerate(built) if result.error_msg is None]
    times: dict[int, list[float]] = {i: [] for i in ready}
    shuffle = random.Random(0)
    try:
        for round_ in range(CONFIRM_ROUNDS):
            _stop_if(interrupted)
            log(f"tune: confirming, round {round_ + 1}/{CONFIRM_ROUNDS}")
            order = shuffle.sample(ready, len(ready))
            futures = runner.run([ms.runner.RunnerInput(built[i].artifact_path, "cpu", candidates[i][2].args_info)
                                  for i in order])
            for i, future in zip(order, futures):
                result = future.result()
                if not result.error_msg and result.run_secs:
                    times[i].append(_mean_seconds(result.run_secs))
    finally:
        for result in built:
            if result.error_msg is None:
                remove_build_dir(result.artifact_path)
    choices = {}
    for index, task in enumerate(tasks):
        own = [i for i, (task_index, _, _) in enumerate(candidates) if task_index == index]
        default = next((i for i in own if candidates[i][1] is defaults.get(index)), None)
        best = _choose({i: times.get(i, []) for i in own}, default)
        if best is None:
            log(f"tune: warning: {task.task_name}: no schedule timed in {CONFIRM_MIN_ROUNDS} rounds; "
                "its choice is unchanged")
            continue
        record = candidates[best][1]
        chosen = ms.database.TuningRecord(record.trace, workloads[index], times[best], target, record.args_info)
        choices[keys[index]] = tuning_log.record_json(chosen)
        median = statistics.median(times[best])
        if best == default:
            log(f"tune: {task.task_name}: default schedule kept, median {median * 1e3:.4f} ms")
            continue
        versus = "default not timed" if default is None or len(times.get(default, [])) < CONFIRM_MIN_ROUNDS \
            else f"default {statistics.median(times[default]) * 1e3:.4f} ms"
        log(f"tune: {task.task_name}: tuned schedule, median {median * 1e3:.4f} ms ({versus})")
    return choices


def _choose(times: dict[int, list[float]], default: int | None) -> int | None:
    """The candidate with the lowest median time among those timed in at least
    CONFIRM_MIN_ROUNDS rounds, `default` on a tie; None when there is none."""
    timed = {i: statistics.median(t) for i, t in times.items() if len(t) >= CONFIRM_MIN_ROUNDS}
    if not timed:
        return None
    return min(timed, key=lambda i: (timed[i], i != default))


def _mean_seconds(run_secs) -> float:
    """A measurement's time as MetaSchedule ranks records by it: the mean of its repeats."""
    return sum(float(s) for s in run_secs) / len(run_secs)


def _without_tvm_intrinsics() -> None:
    """Let MetaSchedule's TuneContext import `tvm.s_tir.tensor_intrin` without running that
    package's __init__, which parses every tensor intrinsic TVM ships (CUDA, x86, Arm, ROCm,
    Hexagon, RISC-V TVMScript: 25-40 s at the start of every tune run on this project's machine)
    so that MetaSchedule's built-in schedule rules and postprocessors find them. The design spaces
    here use neither (`sch_rules=[]`, `postprocs=[]`); the kernels tensorize into tvmbits' own
    intrinsics (`register_intrinsics`). The package is entered with its path, so any of its
    submodules still imports, and registers its intrinsics, when something asks for it."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    package = importlib.util.module_from_spec(importlib.util.find_spec(name))  # its __init__ not run
    sys.modules[name] = package
    tvm.s_tir.tensor_intrin = package


def _design_space(sch: tvm.s_tir.Schedule, target: tvm.target.Target) -> None:
    """The default schedule with its tile sampled (MetaSchedule wants None back, not a flag)."""
    schedule_lowbit(sch, target, tunable=True)


def _cuda_design_spaces(sch: tvm.s_tir.Schedule, target: tvm.target.Target) -> list:
    """The CUDA GEMM function scheduled with each tuned tile (`schedules.cuda.design_spaces`)."""
    return cuda_schedules.design_spaces(sch.mod["main"], target)


def _builder(profile) -> ms.builder.Builder:
    export = candidate_build.cross_export(profile.cross_compiler) if profile.cross_compiler else None
    return ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT, f_build=candidate_build.build, f_export=export)


def _runner(remote: Remote | None, cuda: bool = False) -> ms.runner.Runner:
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
    if remote is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator, initializer=_cuda_worker if cuda else None)
    host, port = address("--rpc", remote.rpc) if remote.rpc else address("--tracker", remote.tracker)
    config = ms.runner.RPCConfig(
        tracker_host=host, tracker_port=port, tracker_key=remote.key or "direct",
        session_timeout_sec=max(1, int(remote.timeout)),
    )
    # MetaSchedule's RPC runner asks a tracker for each session; with --rpc it connects directly
    return ms.runner.RPCRunner(
        config, evaluator_config=evaluator, f_create_session=_connect_board if remote.rpc else None
    )


def _cuda_worker() -> None:
    """Runner workers load CUDA candidates, whose kernels are CUDA C source compiled at load
    time: register the compile callback there (`runtime._register_cuda_compiler`)."""
    from tvmbits.runtime import _register_cuda_compiler

    _register_cuda_compiler(tvm.cuda(0))


def _connect_board(config: ms.runner.RPCConfig) -> tvm_rpc.RPCSession:
    """An RPC session straight to the board at the config's host and port (`--rpc`); run in
    MetaSchedule's runner workers, so a module-level function."""
    return tvm_rpc.connect(config.tracker_host, int(config.tracker_port), session_timeout=config.session_timeout_sec)


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """One line per measured batch: task, trials so far, that task's best time; then stops the
    tuning if SIGINT has arrived (`_interruptible`)."""

    def __init__(self, names: list[str], total: int, log: Callable[[str], None], interrupted: list):
        super().__init__()
        self.interrupted = interrupted
        self.names = names
        self.total = total
        self.log = log
        self.done = 0
        self.best = [float("inf")] * len(names)

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        if not runner_results:
            return
        self.done += len(runner_results)
        errors = []
        for built, result in zip(builder_results, runner_results):
            error = built.error_msg or result.error_msg
            if error:
                errors.append(error)
            elif result.run_secs:
                self.best[task_id] = min(self.best[task_id], _mean_seconds(result.run_secs) * 1e3)
        best = self.best[task_id]
        shown = f"{best:.4f} ms" if best < float("inf") else "none valid yet"
        failed = f"; {len(errors)} failed ({_last_line(errors[0])})" if errors else ""
        self.log(
            f"tune: {self.done}/{self.total} trials; task {task_id + 1}/{len(self.names)} "
            f"{self.names[task_id]}: best {shown}{failed}"
        )
        _stop_if(self.interrupted)  # after the batch is logged (and flushed to the log before this)


def _last_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[-1][:200] if lines else "unknown error"
