"""One run per job directory: an OS lock held for the run's life, and no finished run overwritten by accident.

``claim_job_dir(job_dir, resume=..., restart=...)`` is a context manager. Inside it the process holds an exclusive
``flock`` on ``<job_dir>/job.lock`` (the kernel drops it when the process dies, so a stale lock from a killed run is
simply taken over). A second run on the same directory fails at once with a one-line ``JobDirError``. A directory
that already holds a run (one of ``RUN_MARKERS``) is refused unless ``resume`` (continue it) or ``restart``
(move the old run aside into ``<job_dir>/previous-<time>/``: nothing is deleted).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["JobDirError", "RUN_MARKERS", "claim_job_dir", "move_run_aside"]

#: Files whose presence means a directory holds a run (fine-tuning, pruning or evaluation).
RUN_MARKERS: tuple[str, ...] = ("checkpoint.pth.tar", "model_best.pth.tar", "metrics.csv", "summary.json",
                                "pruned.pth.tar", "prune_summary.json", "last_shot.pth.tar")
LOCK_NAME = "job.lock"


class JobDirError(ValueError):
    """The job directory is in use by another run, or holds a run that this one would overwrite."""


def _holder(lock_path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(lock_path.read_text().strip())})"
    return ""


def move_run_aside(job_dir: Path, markers: Sequence[str] = RUN_MARKERS) -> Path:
    """Move the run in ``job_dir`` (its marker files, ``logs/``, ``args.json``, ``config.txt``, ``curves.png``)
    into a new ``previous-<YYYYmmdd-HHMMSS>`` folder inside it; returns that folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = job_dir / f"previous-{stamp}"
    suffix = 1
    while target.exists():
        target = job_dir / f"previous-{stamp}-{suffix}"
        suffix += 1
    target.mkdir()
    for name in (*markers, "logs", "args.json", "config.txt", "curves.png"):
        source = job_dir / name
        if source.exists():
            os.replace(source, target / name)
    return target


@contextlib.contextmanager
def claim_job_dir(job_dir: str | os.PathLike, *, resume: bool = False, restart: bool = False,
                  markers: Sequence[str] = RUN_MARKERS) -> Iterator[Path]:
    """Lock ``job_dir`` for this run (see the module docstring); yields the directory as a Path."""
    if resume and restart:
        raise JobDirError("--resume and --restart contradict each other; pass one of them")
    path = Path(job_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock_path = path / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise JobDirError(f"cannot use job dir {path}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobDirError(f"job dir {path} is in use by another run{_holder(lock_path)}; wait for it to finish "
                              "or choose another --job_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        found = [name for name in markers if (path / name).exists()]
        if found and not resume:
            if not restart:
                raise JobDirError(f"job dir {path} already holds a run ({found[0]}); pass --resume to continue it, "
                                  "--restart to move it aside, or choose another --job_dir")
            move_run_aside(path, markers)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
