"""Atomic writes: a file or folder appears complete under its final name, or not at all, with ordinary permissions.

    write_file(path, lambda tmp: image.save(tmp, format="PNG"))      # replaces `path` only once the write succeeded
    write_file(path, writer, overwrite=False)                         # FileExistsError instead of replacing
    with staged_file(folder, "x.png") as tmp: ...; publish(tmp, final, overwrite=False)   # several candidate names
    with staged_dir(out / "model") as tmp: pipe.save_pretrained(tmp)  # the old folder is kept until the new one is in

Everything is first written under a temporary name in the SAME folder (a rename never crosses file systems, so it is
atomic and needs no space), flushed to disk (fsync), given the mode the umask gives an ordinary new file (`0o666 &
~umask`; folders `0o777 & ~umask`), and only then renamed or hard-linked to its final name. `tempfile.mkstemp` and
`mkdtemp` create 0600 files and 0700 folders whatever the umask, and a rename keeps that mode: without the chmod every
result would be private to its owner. An interrupted or failed write leaves at most a dot-named temporary, which
nothing mistakes for a result (and the next run's temporary gets a new name).

The umask is read from /proc/self/status (Linux ≥ 4.7). Elsewhere it falls back to `os.umask(0o022)` followed by
restoring the old value: the only portable way to read it, but process-wide, so a thread creating a file in between
would see umask 022. sdkit writes its results from the main thread, where that window is harmless.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

NO_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})  # what a full disk (or a size limit/quota) raises


def umask() -> int:
    """The process's umask, without changing it where /proc says it (see the module docstring for the fallback)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """The permissions `open(path, "w")` gives a new file under the current umask (0o644 under umask 022)."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The permissions `mkdir` gives a new folder under the current umask (0o755 under umask 022)."""
    return 0o777 & ~umask()


FULL_DISK_TEXTS = (  # how libraries that do not raise OSError word it (safetensors: "... (os error 28)")
    ("No space left on device", errno.ENOSPC), ("os error 28)", errno.ENOSPC), ("File too large", errno.EFBIG),
    ("os error 27)", errno.EFBIG), ("Disk quota exceeded", errno.EDQUOT), ("os error 122)", errno.EDQUOT),
)  # fmt: skip


def full_disk_errno(err: BaseException | None) -> int | None:
    """ENOSPC, EFBIG or EDQUOT when `err` (or an error it was raised from) is a write that ran out of space, also when
    a library reports it as text (safetensors' Rust writer); None for any other error."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if getattr(err, "errno", None) in NO_SPACE:
            return err.errno
        text = str(err)
        for fragment, code in FULL_DISK_TEXTS:
            if fragment in text:
                return code
        err = err.__cause__ or err.__context__
    return None


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush a file (or a folder's entries) to disk; a file system that cannot fsync a folder is not an error."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_file(folder: Path, name: str = "") -> Iterator[Path]:
    """An empty temporary file in `folder` (created if missing), removed on exit. Write it, then `publish` it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def publish(tmp: Path, final: Path, *, overwrite: bool = True) -> Path:
    """fsync `tmp`, give it an ordinary file's mode, and rename it onto `final` (overwrite) or hard-link it there (not
    overwrite: FileExistsError when `final` exists, even if another process created it a moment ago)."""
    _fsync(tmp)
    os.chmod(tmp, file_mode())
    if overwrite:
        os.replace(tmp, final)
    else:
        os.link(tmp, final)
    _fsync(Path(final).parent, directory=True)
    return Path(final)


def write_file(path: Path, write: Callable[[Path], object], *, overwrite: bool = True) -> Path:
    """`write(tmp)` into a temporary sibling of `path`, then `publish` it as `path`."""
    path = Path(path)
    with staged_file(path.parent, path.name) as tmp:
        write(tmp)
        return publish(tmp, path, overwrite=overwrite)


def write_bytes(path: Path, data: bytes, *, overwrite: bool = True) -> Path:
    return write_file(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


def write_text(path: Path, text: str, *, overwrite: bool = True) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite)


def write_safetensors(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> Path:
    """A safetensors file written like every other: `save_file` into a temporary sibling, then `publish`ed."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return write_file(Path(path), lambda tmp: save_file(state, str(tmp), metadata=dict(metadata)))


def finish_tree(root: Path) -> None:
    """Give every folder and file under `root` (itself included) the ordinary modes and flush the files to disk:
    what a staged folder needs before it is renamed into place (temp folders start 0700; libraries may not fsync)."""
    root = Path(root)
    fmode, dmode = file_mode(), dir_mode()
    for folder, dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                continue
            _fsync(path)
            os.chmod(path, fmode | (path.stat().st_mode & 0o111 & dmode))  # an executable stays executable
        for name in dirs:
            os.chmod(Path(folder) / name, dmode)
        _fsync(Path(folder), directory=True)
    os.chmod(root, dmode)


def new_dir(final: Path, kind: str = "tmp") -> Path:
    """A new empty dot-named folder beside `final`, with an ordinary folder's mode."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{kind}-", dir=final.parent))
    os.chmod(tmp, dir_mode())
    return tmp


def replace_dir(tmp: Path, final: Path) -> Path:
    """Rename the folder `tmp` onto `final`. An existing `final` is moved aside first and removed only once the new
    one is in place (if the rename fails, it is put back)."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists() and not final.is_symlink():
        os.rename(tmp, final)
    else:
        old = final.with_name(f".{final.name}.old-{secrets.token_hex(4)}")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)
            raise
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    _fsync(final.parent, directory=True)
    return final


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A new temporary folder beside `final` to write into. On a normal exit it gets ordinary modes, is flushed, and
    replaces `final` (`replace_dir`); on an exception it is removed and `final` is left as it was."""
    tmp = new_dir(final)
    try:
        yield tmp
        finish_tree(tmp)
        replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def device_of(path: Path) -> str:
    """Where `path` (or its nearest existing parent) lives, for messages: its mount point, with the device or file
    system named in /proc/mounts when that is readable, e.g. "/data (/dev/sdb1)" or "/tmp/disk (tmpfs)"."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    probe = probe.resolve()
    while not os.path.ismount(probe) and probe != probe.parent:
        probe = probe.parent
    with contextlib.suppress(OSError):
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            sources = {fields[1]: fields[0] for fields in (line.split() for line in f) if len(fields) > 1}
        source = sources.get(str(probe))
        if source:
            return f"{probe} ({source})"
    return str(probe)
