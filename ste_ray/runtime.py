"""What a job does around its stage, and only jobs call: connect to (or start) Ray and stop it at
the end; keep the console quiet; turn expected failures into one-line errors.

A quiet console: the job's own lines, its progress bars and its end table go to the terminal;
everything else the process prints (Ray's and vLLM's logs streamed from the workers, library
warnings, C++ log lines) goes to a log file under the run's output directory, whose path is
printed once. ``--verbose`` shows it all live instead. An error still reaches the terminal: one
line for the failures a user can fix (``error: ...``), the full traceback for anything else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, TextIO

from ste_ray.config import option

# ---------------------------------------------------------------------------------------------
# Ray


@dataclasses.dataclass
class RayConfig:
    """Where Ray runs."""

    address: str = option(
        "",
        help="Ray cluster to join: empty starts a local Ray instance (or joins $RAY_ADDRESS when set, as "
        "under `ray job submit`); 'auto' joins the cluster this machine belongs to; or ray://host:10001",
    )
    num_cpus: int | None = option(
        None,
        help="Logical CPUs of a *local* Ray instance (default: max(8, cores)). Ray's CPU counts are "
        "scheduling slots, not cores: the engine's stages each reserve one, so 2 real cores need more slots",
        ge=1,
    )
    include_dashboard: bool = option(True, help="Start the Ray dashboard with a local Ray instance")


def init_ray(cfg: RayConfig) -> str | None:
    """Connect to (or start) Ray unless already connected. Returns what this call did: "local" (it
    started a local instance), "joined" (it joined a running cluster), or None (already connected)."""
    import ray

    if ray.is_initialized():
        return None
    kwargs = {"logging_level": logging.WARNING}
    # Under `ray job submit` the supervisor names the job's own cluster in RAY_ADDRESS; "auto"
    # alone would pick whichever cluster was started last on this host.
    address = os.environ.get("RAY_ADDRESS") if cfg.address in ("", "auto") else cfg.address
    if address or cfg.address:
        ray.init(address=address or cfg.address, **kwargs)
        return "joined"
    ray.init(num_cpus=cfg.num_cpus or max(8, os.cpu_count() or 1), include_dashboard=cfg.include_dashboard, **kwargs)
    return "local"


@contextlib.contextmanager
def ray_cluster(cfg: RayConfig) -> Iterator[None]:
    """Ray for the duration of the block; a local instance this started is stopped at the end, a
    cluster joined is left as it was (its Serve applications too: another job's may be running)."""
    connected = init_ray(cfg)
    try:
        yield
    finally:
        if connected:
            import ray
            from ray import serve

            if connected == "local":
                serve.shutdown()
            ray.shutdown()


# ---------------------------------------------------------------------------------------------
# The console


@dataclasses.dataclass
class Console:
    out: TextIO  # the terminal's standard output
    err: TextIO  # the terminal's standard error
    log_path: Path | None  # where everything else goes; None with --verbose

    def print(self, *parts: object) -> None:
        print(*parts, file=self.out, flush=True)


_active: Console | None = None


def terminal() -> TextIO:
    """Where progress bars go: the terminal, even while the console is quiet."""
    return _active.err if _active else sys.stderr


@contextlib.contextmanager
def job_console(log_path: Path, verbose: bool = False) -> Iterator[Console]:
    """The job's console (see the module docstring). Outside ``verbose``, file descriptors 1 and 2
    point at ``log_path`` for the duration, so that child processes and C++ code are quiet too."""
    global _active
    if verbose:
        _active = Console(sys.stdout, sys.stderr, None)
        try:
            yield _active
        finally:
            _active = None
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", buffering=1, encoding="utf-8")
    log.write(f"==== {' '.join(sys.argv)} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = Console(os.fdopen(os.dup(1), "w", buffering=1), os.fdopen(os.dup(2), "w", buffering=1), log_path)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    # ste-ray's own warnings (an endpoint without structured outputs, ...) are for the user too.
    to_terminal = logging.StreamHandler(console.err)
    to_terminal.setLevel(logging.WARNING)
    to_terminal.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger("ste_ray").addHandler(to_terminal)
    _active = console
    console.print(f"logs: {log_path}")
    try:
        yield console
    finally:
        _active = None
        logging.getLogger("ste_ray").removeHandler(to_terminal)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        console.out.close()
        console.err.close()
        log.close()


class JobError(Exception):
    """A failure the user can fix from its message alone: printed as one line, no traceback."""


def run_job(main: Callable[[], None], expected: tuple[type[BaseException], ...] = ()) -> None:
    """Run a job's ``main``: ``JobError`` and the ``expected`` exception types end it with one
    line on stderr and exit status 1; anything else with its full traceback."""
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main()
    except (JobError, *expected) as e:
        message = " ".join(line.strip() for line in str(e).strip().splitlines()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None
