"""`latentcheck --num-processes N <command> ...`: data-parallel convenience that relaunches the command through
``accelerate launch`` as N processes on this machine (CPU processes with the gloo backend when there is no GPU, one
GPU per process otherwise).

Every process runs the same command; ``core.runner.run_records`` hands each one a strided share of the blocks, each
writes its shard, and rank 0 merges the shards and writes the summary (see docs/robustness.md). The exit code is the
one a single process would give (0 ok, 3 error records, 2 could not run, 130 interrupted; core/errors.py): each child
reports its code through a file in ``$LATENTCHECK_LAUNCH_RC_DIR``, and a child whose run completed with error records exits 0 so
that torch.distributed does not mistake it for a crash.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from latentcheck.core.errors import (EXIT_CANNOT_RUN, EXIT_ERROR_RECORDS, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK,
                                     LatentcheckError)

RC_DIR_ENV = "LATENTCHECK_LAUNCH_RC_DIR"
OPTION = "--num-processes"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def split_num_processes(argv: Sequence[str]) -> tuple[int | None, list[str]]:
    """(N, argv without the option) for ``--num-processes N`` / ``--num-processes=N`` anywhere before ``--``."""
    args = list(argv)
    for i, a in enumerate(args):
        if a == "--":
            break
        if a == OPTION or a.startswith(OPTION + "="):
            value = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            rest = args[:i] + args[i + (1 if "=" in a else 2):]
            try:
                n = int(value)
            except ValueError:
                raise LatentcheckError(f"{OPTION} needs a whole number of processes, got {value!r}") from None
            if n < 1:
                raise LatentcheckError(f"{OPTION} must be >= 1, got {n}")
            return n, rest
    return None, args


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def launch_command(n: int, args: Sequence[str], port: int | None = None) -> list[str]:
    """The ``accelerate launch`` command line that runs ``python -m latentcheck <args>`` as ``n`` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port or free_port())]
    # `--multi_gpu` selects accelerate's torch.distributed launcher (N processes). With `--cpu` accelerate takes its
    # simple launcher instead, which starts ONE process unless mpirun is configured; without CUDA the torch.distributed
    # processes run on CPU with the gloo backend, and ACCELERATE_USE_CPU keeps them there when CUDA exists.
    cmd += ["--multi_gpu"] if n > 1 else []
    return cmd + ["-m", "latentcheck", *args]


@dataclass
class LaunchResult:
    """What :func:`run_launch` returns: the single-process exit code and the code each rank reported."""

    exit_code: int
    rank_codes: dict[int, int] = field(default_factory=dict)
    launcher_code: int = 0


def run_launch(n: int, args: Sequence[str], cpu: bool | None = None, port: int | None = None,
               env: dict[str, str] | None = None) -> LaunchResult:
    """Run ``latentcheck <args>`` as ``n`` data-parallel processes (``cpu``: force CPU; default: CPU without CUDA)."""
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise LatentcheckError(f"{OPTION} inside an already distributed launch (WORLD_SIZE={os.environ['WORLD_SIZE']})"
                               "; use one or the other")
    with tempfile.TemporaryDirectory(prefix="latentcheck-launch-") as rc_dir:
        child_env = {**os.environ, **(env or {}), RC_DIR_ENV: rc_dir}
        if cpu or (cpu is None and not _cuda()):
            child_env["ACCELERATE_USE_CPU"] = "true"
        proc = subprocess.run(launch_command(n, args, port), env=child_env)
        codes = {int(p.stem.removeprefix("rank")): int(p.read_text().strip() or 1)
                 for p in Path(rc_dir).glob("rank*.rc")}
    if not codes:  # no child got as far as reporting: the launcher itself failed
        code = proc.returncode or 1
    elif proc.returncode == 0 or worst_exit_code(codes.values()) not in (EXIT_OK, EXIT_ERROR_RECORDS):
        code = worst_exit_code(codes.values())
    else:
        code = proc.returncode
    return LaunchResult(code, dict(sorted(codes.items())), proc.returncode)


def launch(n: int, args: Sequence[str], cpu: bool | None = None, port: int | None = None,
           env: dict[str, str] | None = None) -> int:
    """Run ``latentcheck <args>`` as ``n`` data-parallel processes; return the exit code a single process gives."""
    return run_launch(n, args, cpu, port, env).exit_code


_SEVERITY = {EXIT_OK: 0, EXIT_ERROR_RECORDS: 1, EXIT_INTERNAL: 2, EXIT_CANNOT_RUN: 3, EXIT_INTERRUPTED: 4}


def worst_exit_code(codes: Iterable[int]) -> int:
    """The code that describes several processes' outcomes together (interrupted > could not run > internal error >
    error records > ok)."""
    return max(codes, key=lambda c: _SEVERITY.get(c, 2), default=EXIT_OK)


def child_exit_code(code: int) -> int:
    """In a child of :func:`launch`: report ``code`` and return the code to exit with (error records -> 0, see module
    doc).
    Outside a launch: ``code`` unchanged."""
    rc_dir = os.environ.get(RC_DIR_ENV)
    if not rc_dir:
        return code
    rank = os.environ.get("RANK", "0")
    try:
        Path(rc_dir, f"rank{rank}.rc").write_text(str(code))
    except OSError:
        return code
    return EXIT_OK if code == EXIT_ERROR_RECORDS else code
