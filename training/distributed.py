"""Training in several processes: ``accelerate launch`` from a task, watched through files.

A run whose config asks for more than one process (``"num_processes": 4`` or ``"auto"``,
optionally ``"accelerate_config": "fsdp"``, the name of a file in ``ACCELERATE_CONFIGS_DIR``, for FSDP or DeepSpeed) does not
train inside the Celery worker: :func:`launch_processes` writes the inputs to a work
directory and starts ``python -m accelerate.commands.launch ... -m training.ml.<module>``
in its own process group. The ML entry points cannot call back into Django, so the
task talks to them through files: it tails their metrics JSONL into Metric rows and
progress, creates their stop file when an admin cancels, and reads their results file.

On a machine without a GPU, ``accelerate launch --num_processes N`` alone runs ONE
process (its simple launcher), and ``--cpu`` does the same (accelerate's multi-CPU path
expects ``mpirun``). What forms an N-process gloo group is ``--multi_gpu`` (accelerate's
torchrun-based launcher) together with ``ACCELERATE_USE_CPU=1`` in the environment:
without it each worker's ``Accelerator`` finds no CUDA and falls back to a single,
non-distributed process. So on CPU hosts the launcher sets both; no separate torchrun
fallback is needed. Each launch picks a free rendezvous port, so two runs on one node
do not collide on accelerate's default 29500.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from training.run_configs import accelerate_config_path
from training.runs import RunCancelled, RunReporter

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT_TAIL_LINES = 15
ERROR_SEARCH_LINES = 400
# "ValueError: ...", "[rank1]: torch.OutOfMemoryError: ...": what a rank's traceback ends with.
EXCEPTION_LINE = re.compile(r"^(\[rank\d+\]:\s*)?([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)):\s*(.*)$")
# After the stop file appears the processes finish their micro-batch and exit; past this
# they are killed (a rank stuck in a collective never reads the file).
STOP_GRACE_SECONDS = 60.0
HEARTBEAT_SECONDS = 30.0


class LaunchFailed(RuntimeError):
    """The training processes exited with an error; the message ends with their last output lines."""


def process_count(config: dict, *, gpu_count: int | None = None) -> int:
    """How many training processes a run's config asks for; 1 means train in the worker itself.

    ``config["num_processes"]``: absent or 1 (the default), an integer, or ``"auto"`` (every
    GPU of the node when there are several, else 1). ``gpu_count`` defaults to
    ``torch.cuda.device_count()`` and is only consulted for ``"auto"``.
    """
    requested = config.get("num_processes", 1)
    if requested in (None, "", 1, "1"):
        return 1
    if requested == "auto":
        if gpu_count is None:
            import torch

            gpu_count = torch.cuda.device_count()
        return gpu_count if gpu_count > 1 else 1
    try:
        count = int(requested)
    except (TypeError, ValueError):
        raise ValueError(f'"num_processes" must be a whole number or "auto", not {requested!r}.') from None
    if count < 1:
        raise ValueError(f'"num_processes" must be at least 1, not {count}.')
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count()
    devices = gpu_count or os.cpu_count() or 1  # one process per GPU, or per CPU core without one
    if count > devices:
        what = f"{gpu_count} GPU{'s' if gpu_count != 1 else ''}" if gpu_count else f"{devices} CPU cores"
        raise ValueError(
            f'"num_processes" is {count}, but this worker has {what}; ask for at most {devices}.'
        )
    return count


def launch_dir(run) -> Path:
    """Where a run's multi-process inputs, metrics, stop file, results and output live."""
    return Path(settings.ARTIFACTS_DIR) / "runs" / f"run-{run.pk}" / "launch"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(
    *,
    module: str,
    config_path: Path,
    num_processes: int,
    accelerate_config: str | None,
    cuda: bool,
    port: int,
) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command line and the extra environment for it."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    command += ["--num_machines", "1", "--main_process_port", str(port)]
    env = {"PYTHONUNBUFFERED": "1"}
    if accelerate_config:
        path = accelerate_config_path(accelerate_config)
        if path is None:
            raise ValueError(
                f"No accelerate config named {accelerate_config!r} in {settings.ACCELERATE_CONFIGS_DIR}."
            )
        command += ["--config_file", str(path)]  # its distributed_type: FSDP, DeepSpeed...
    elif num_processes > 1:
        command.append("--multi_gpu")  # the torchrun launcher: the only one that starts N local processes
    if not cuda:
        env["ACCELERATE_USE_CPU"] = "1"  # workers form a gloo group instead of each running alone
    command += ["-m", module, "--config", str(config_path)]
    return command, env


class _Tail:
    """New complete lines of a file that another process appends to."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]


def _report(reporter: RunReporter, line: str, stage: str) -> None:
    """One metrics line of either entry point into the reporter."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return
    if "update" in record:  # training.ml.ppo.file_hooks: {"update", "num_updates", **metrics}
        update, total = int(record.pop("update")), int(record.pop("num_updates"))
        reporter.metrics(update, {k: v for k, v in record.items() if isinstance(v, int | float)})
        reporter.progress(update, total, stage)
    elif "metrics" in record:  # training.ml.reward.main: {"step", "metrics"} | {"step", "total"}
        reporter.metrics(int(record["step"]), record["metrics"])
    elif "total" in record:
        reporter.progress(int(record["step"]), int(record["total"]), stage)


def _first_error(lines: list[str]) -> str:
    """The first exception a rank raised (the launcher's own ChildFailedError comes after it)."""
    for line in lines:
        match = EXCEPTION_LINE.match(line.strip())
        if match and not match.group(2).endswith("ChildFailedError"):
            return f"{match.group(2)}: {match.group(4)}".strip().rstrip(":")
    return "see the output below"


def _end_group(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def launch_processes(
    *,
    module: str,
    config: dict,
    work_dir: Path,
    reporter: RunReporter,
    num_processes: int,
    accelerate_config: str | None = None,
    stage: str = "Training",
    stop_grace: float = STOP_GRACE_SECONDS,
    poll_interval: float = 0.5,
) -> dict:
    """Run ``python -m <module> --config run.json`` in ``num_processes`` processes and wait for it.

    ``config`` is the entry point's run description; ``metrics_path``, ``stop_file`` and
    ``results_path`` (all inside ``work_dir``) are added to it. Metrics and progress
    stream into ``reporter`` while the processes run, their output goes to
    ``work_dir/output.log`` and into the run's log. When ``reporter.should_stop()``
    turns True the stop file is created; processes still running ``stop_grace`` seconds
    later are killed, and :class:`RunCancelled` is raised. A non-zero exit raises
    :class:`LaunchFailed` with the last lines of output. Returns the results file's
    contents (``{}`` when the entry point writes none) plus ``num_processes``.
    """
    import torch

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    metrics_path, stop_file = work_dir / "metrics.jsonl", work_dir / "STOP"
    results_path, output_path = work_dir / "results.json", work_dir / "output.log"
    for stale in (metrics_path, stop_file, results_path):  # left by an earlier attempt
        stale.unlink(missing_ok=True)
    config_path = work_dir / "run.json"
    spec = {
        **config,
        "metrics_path": str(metrics_path),
        "stop_file": str(stop_file),
        "results_path": str(results_path),
    }
    config_path.write_text(json.dumps(spec, indent=2, default=str))
    command, extra_env = launch_command(
        module=module,
        config_path=config_path,
        num_processes=num_processes,
        accelerate_config=accelerate_config,
        cuda=torch.cuda.is_available(),
        port=_free_port(),
    )
    env = {**os.environ, **extra_env}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    reporter.log(f"Launching {num_processes} processes: {' '.join(command[1:])}")
    reporter.flush()

    metrics, output = _Tail(metrics_path), _Tail(output_path)
    tail: list[str] = []  # the last lines of output, for the error message
    stop_requested_at: float | None = None
    last_heartbeat = time.monotonic()

    def drain() -> None:
        for line in metrics.lines():
            _report(reporter, line, stage)
        for line in output.lines():
            if line.strip():
                reporter.log(line[:500])
                tail.append(line)
                del tail[:-ERROR_SEARCH_LINES]

    with open(output_path, "ab") as output_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: cancelling ends every rank
        )
    try:
        while process.poll() is None:
            drain()
            if stop_requested_at is None and reporter.should_stop():
                stop_file.touch()
                stop_requested_at = time.monotonic()
                reporter.log("Cancel requested: asked the training processes to stop.")
            if stop_requested_at is not None and time.monotonic() - stop_requested_at > stop_grace:
                reporter.log(f"The processes did not stop within {stop_grace:.0f} s; killing them.")
                _end_group(process, grace=10.0)
            if time.monotonic() - last_heartbeat >= HEARTBEAT_SECONDS:  # long silent phases (loading)
                reporter.flush()
                last_heartbeat = time.monotonic()
            time.sleep(poll_interval)
    finally:
        if process.poll() is None:  # the task itself is being stopped (time limit, worker shutdown)
            _end_group(process, grace=10.0)
        drain()
        reporter.flush()

    if stop_requested_at is not None:
        raise RunCancelled
    if process.returncode != 0:
        raise LaunchFailed(
            f"The {num_processes} training processes exited with status {process.returncode}: "
            f"{_first_error(tail)}. Their last output:\n" + "\n".join(tail[-OUTPUT_TAIL_LINES:])
        )
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    return {**results, "num_processes": num_processes}
