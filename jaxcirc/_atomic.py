"""Atomic writes: a crash never leaves a half-written file or folder under the final name.

A file is written beside its final name and renamed into place (`atomic_write`). A folder
(`replace_dir`) is filled as a hidden sibling `.NAME.tmp-XXXXXXXX` and fsynced; a previous
version is moved aside to `.NAME.old-XXXXXXXX`, the new one renamed into place, and the old one
deleted. Saves and recoveries in one parent folder take turns under an exclusive `flock` on it,
which the kernel releases when a process dies, so whatever hidden siblings a save finds are the
remains of a killed save: `recover` deletes them, after moving the newest previous version that
was set aside back into place when `NAME` is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

KILL_ENV = "JAXCIRC_KILL_SAVE_AT"  # test hook: SIGKILL the saving process at a named stage


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def kill_point(name: str) -> None:
    """Die here when the `JAXCIRC_KILL_SAVE_AT` test hook names this stage of a save."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def fsync_path(path: Path) -> None:
    """fsync a file or folder (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(directory: Path):
    """An exclusive `flock` on `directory`; a no-op where `fcntl` is missing (not POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def leftovers(path: Path) -> dict[str, list[Path]]:
    """Hidden siblings that saves of `path` leave while they run: `tmp` (being written) and
    `old` (the previous version, moved aside)."""
    found: dict[str, list[Path]] = {"tmp": [], "old": []}
    if not path.parent.is_dir():
        return found
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(tmp|old)-[0-9a-f]{{8}}$")
    for sibling in path.parent.iterdir():
        match = pattern.match(sibling.name)
        if match:
            found[match.group(1)].append(sibling)
    return found


def has_interrupted_save(path: str | os.PathLike) -> bool:
    """Whether an interrupted save of `path` left hidden siblings behind."""
    return any(leftovers(Path(path)).values())


def _recency(directory: Path) -> int:
    """When a folder was last completed: the newest modification time of it and its files
    (a save writes its marker last)."""
    times = [directory.stat().st_mtime_ns]
    times += [p.stat().st_mtime_ns for p in directory.iterdir() if p.is_file()]
    return max(times)


def recover_locked(path: Path) -> bool:
    """With the lock held: undo what killed saves of `path` left. The newest previous version
    moved aside goes back to `path` if `path` is missing; every other leftover is deleted.
    Returns whether `path` was restored."""
    left = leftovers(path)
    restored = False
    olds = sorted(left["old"], key=_recency)
    if olds and not path.exists() and not path.is_symlink():
        try:
            os.replace(olds[-1], path)
        except OSError as e:
            raise OSError(
                f"an interrupted save of {path} moved the previous version to {olds[-1]} and it "
                f"cannot be moved back ({e}); rename it to {path} yourself"
            ) from e
        fsync_path(path.parent)
        olds.pop()
        restored = True
    for leftover in (*left["tmp"], *olds):
        shutil.rmtree(leftover, ignore_errors=True)
    return restored


def recover(path: str | os.PathLike) -> bool:
    """`recover_locked` under the parent folder's lock (nothing to do if it does not exist)."""
    path = Path(path)
    if not path.parent.is_dir() or not has_interrupted_save(path):
        return False
    with locked(path.parent):
        return recover_locked(path)


def replace_dir(path: str | os.PathLike, fill, ours, what: str) -> Path:
    """Write the folder `path` atomically: `fill(tmp)` fills a hidden sibling, which then
    replaces `path` (the swap in the module docstring). Under the parent's lock, leftovers of
    killed saves go first; `path` may only be a folder where `ours(path)` holds, an empty one,
    or missing (`what` names what it should be). Returns `path`."""
    path = Path(path).expanduser()
    if path.name in ("", ".", ".."):
        path = path.absolute().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent):
        recover_locked(path)
        if path.is_symlink():
            raise FileExistsError(
                f"{path} is a symlink; save to the directory it points to "
                f"({os.readlink(path)}) or remove the link"
            )
        if path.exists() and not (ours(path) or (path.is_dir() and not any(path.iterdir()))):
            raise FileExistsError(
                f"{path} exists and is not {what}; refusing to replace it: "
                "choose a new path, or delete it yourself"
            )
        _swap(path, fill)
    return path


def _swap(path: Path, fill) -> None:
    tag = uuid.uuid4().hex[:8]
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    old = path.parent / f".{path.name}.old-{tag}"
    try:
        tmp.mkdir()
        fill(tmp)
        fsync_path(tmp)
        kill_point("marker")
        if path.exists():
            os.replace(path, old)
            fsync_path(path.parent)
            kill_point("aside")
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous version back
                raise
            fsync_path(path.parent)
            kill_point("swapped")
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
            fsync_path(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
