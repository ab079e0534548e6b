"""Atomic file writes: a temporary file in the target folder, fsync, then rename, so an output is
either complete or absent, never half-written."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from qrdeploy.errors import OutputError


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary path beside `path`, then rename it onto `path`.

    A device, FIFO or socket at `path` (`-o /dev/null`) is written through instead: renaming over
    it would replace it with a regular file. A path that cannot be written (a folder, a read-only
    or pseudo file system, a full disk) raises OutputError with the reason, and nothing is left
    behind."""
    target = Path(path)
    if _special(target):
        try:
            write(target)
        except OSError as exc:
            raise _cannot(target, exc) from exc
        return target
    check_output_file(target, probe=False)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(target)
        prefix = f".{target.name}.{os.getpid()}."
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise _cannot(target, exc) from exc
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _cannot(target, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def check_output_file(path: str | os.PathLike[str], probe: bool = True) -> Path:
    """Raise OutputError unless a file can be written at `path` (missing folders are created
    later). `probe`: also create and delete a temporary file in the nearest existing folder,
    which catches what permission bits do not show (a read-only or pseudo file system, root
    on /proc). For commands to call before their work, so a bad `-o` fails in seconds."""
    target = Path(path)
    if _special(target):
        return target
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a folder; give a file path inside it")
    _check_folder(target.parent, target, probe)
    return target


def check_distinct_paths(outputs: Mapping[str, str | os.PathLike[str]],
                         inputs: Mapping[str, str | os.PathLike[str]],
                         flags: Mapping[str, str]) -> None:
    """Raise OutputError when an output path names a file that is read (it would be replaced
    before or while it is read) or that another output names (one would overwrite the other).
    Keys are option dests, `flags` their names as typed (`-o`, `--junit`, `MODEL`); devices and
    FIFOs (`-o /dev/null`) may be shared."""
    seen: dict[Path, str] = {}
    for dest, path in outputs.items():
        target = Path(path)
        if _special(target):
            continue
        key = target.resolve()
        name = flags.get(dest, dest)
        if key in seen:
            raise OutputError(f"cannot write {target}: {seen[key]} and {name} both name it; give "
                              "each output its own path")
        seen[key] = name
        for src_dest, src in inputs.items():
            if target.exists() and os.path.samefile(target, src):
                raise OutputError(f"cannot write {target}: it is {flags.get(src_dest, src_dest)}, "
                                  f"which this command reads; give {name} another path")


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """Raise OutputError unless `path` is, or can become, a writable folder."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputError(f"cannot write into {target}: it is a file, not a folder; give a "
                          "folder path")
    _check_folder(target, target, probe=True)
    return target


def _check_folder(folder: Path, target: Path, probe: bool) -> None:
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {target}: {existing} is a file, not a folder; choose "
                          "another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {target}: the folder {existing} is not writable; "
                          "choose another path")
    if probe:
        try:
            fd, name = tempfile.mkstemp(prefix=".qrdeploy-probe.", dir=existing)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise _cannot(target, exc) from exc


def _special(path: Path) -> bool:
    """A device, FIFO or socket (not a regular file, not a folder)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _cannot(target: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or type(exc).__name__
    fix = ("free some space there and rerun" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else "choose a writable path")
    return OutputError(f"cannot write {target}: {reason}; {fix}")


def _remove_orphans(target: Path) -> None:
    """Delete temporary files of `target` left by writers that were killed (SIGKILL). The writer's
    pid is in the name, so a temporary file of a live writer (another process writing the same
    target at the same time) is never touched."""
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        pid = tmp.name[len(target.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            tmp.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
