"""Who may write a folder: one writer at a time, and --overwrite only over what its own kind wrote.

Every script that writes a folder first checks it (`check_output`), then
claims it (`claim`) before any work: an exclusive `flock` on the folder's lock
file, held until the process ends, so a SIGKILL never leaves a stale lock. A
second writer is refused with the PID that holds the folder. Claiming also
removes the temporary files of writes that a kill interrupted. A run refused
by a later check gives its claims back (`abandon`): what claiming created goes
again, so bad input leaves the tree as it was.

`--overwrite` replaces a folder only when everything in it is what scripts of
the same kind write (a `FolderKind`'s entries); a folder holding anything else
is refused and left untouched.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from regimen.core.errors import UserError

LOCK_FILE = ".regimen.lock"
TEMPORARY_MARK = "regimen-tmp"  # in the names of temporary files, so that cleaning never takes a user's file
# What `files.atomic_write_bytes` and the plot writer leave when killed mid-write: .<name>.<random>.regimen-tmp[.png]
TEMPORARY = re.compile(rf"^\..+\.{TEMPORARY_MARK}(\.[A-Za-z0-9]+)?$")
_HELD: dict[Path, int] = {}  # folder -> the open lock file's descriptor, kept until the process ends
_CREATED: dict[Path, list] = {}  # folder -> [the lock file it created or None, then the folders, innermost first]
_PREVIOUS: dict[Path, bytes] = {}  # folder -> what its lock file said before this process claimed it


@dataclass(frozen=True)
class FolderKind:
    """What one kind of script writes into its folder.

    Attributes:
        name: how messages call the folder ("a run folder").
        content: how they call what it holds ("a run").
        files: the files it writes; the first vouches for the rest and is removed first.
        folders: the subfolders it writes.
        writers: the scripts that write it, for messages.
        whole: written as a whole (swapped in), so anything in it counts as its content.
    """

    name: str
    content: str
    files: tuple[str, ...]
    folders: tuple[str, ...] = ()
    writers: str = ""
    whole: bool = False

    @property
    def entries(self) -> frozenset[str]:
        return frozenset(self.files + self.folders)


def contents(folder: Path) -> list[str]:
    """The entries of `folder` (sorted), without its lock file and interrupted temporary files."""
    if not folder.is_dir():
        return []
    return sorted(name for name in os.listdir(folder) if name != LOCK_FILE and not TEMPORARY.match(name))


def holds(folder: Path, kind: FolderKind) -> list[str]:
    """The entries of `folder` that its kind of script writes (every entry, for a whole kind)."""
    return [name for name in contents(folder) if kind.whole or name in kind.entries]


def check_output(folder: Path, kind: FolderKind, flag: str, overwrite: bool = False, fresh: bool = False,
                 resumable: bool = False) -> Path:
    """Check an output folder before any work: a folder (or creatable), writable; where something
    new starts (`fresh`), not one that holds an earlier one unless `overwrite`; and with
    `overwrite`, nothing in it that this kind of script did not write."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: is a file; expected a folder")
    held = holds(folder, kind)
    if fresh and held and not overwrite:
        resume = "--resume to continue it, " if resumable else ""
        raise UserError(f"{flag} {folder}: already holds {kind.content} ({', '.join(held[:3])}); pass {resume}"
                        "--overwrite to start again, or choose another folder")
    if overwrite:
        foreign = [name for name in contents(folder) if name not in kind.entries]
        if foreign:
            shown = ", ".join(name + ("/" if (folder / name).is_dir() else "") for name in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise UserError(f"{flag} {folder}: --overwrite replaces only {kind.name} ({kind.writers}), and "
                            f"this folder also holds {shown}{more}; move them away or choose another folder")
    for name in kind.files:
        if (folder / name).is_dir():
            raise UserError(f"{flag} {folder}: {name} is a folder; expected the file {kind.writers} write")
    for name in kind.folders:
        if (folder / name).exists() and not (folder / name).is_dir():
            raise UserError(f"{flag} {folder}: {name} is a file; expected a folder")
    _check_writable(folder, flag)
    return folder


def _check_writable(folder: Path, flag: str) -> None:
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {folder}: {existing} is a file; expected a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: cannot write there ({existing} is not writable)")


def claim(folder: Path, flag: str) -> Path:
    """Create `folder` and hold its lock until this process ends (a second claim here is a no-op).

    Raises:
        UserError: when another process holds the folder, naming its PID.
    """
    folder = Path(folder)
    key = folder.resolve()
    if key in _HELD:
        return folder
    lock = folder / LOCK_FILE
    created = [None if lock.exists() else lock] + [path for path in [key, *key.parents] if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        _remove_created(created[1:])  # the folders only: a lock file there is never ours to remove
        raise UserError(f"{flag} {folder}: cannot write there ({error.strerror or error})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(handle)
        os.close(handle)
        _remove_created(created[1:])
        raise UserError(f"{flag} {folder}: in use by {holder}; wait for it to finish, or choose another "
                        "folder") from None
    _PREVIOUS[key] = os.pread(handle, 1 << 16, 0)
    os.ftruncate(handle, 0)
    os.write(handle, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}).encode())
    _HELD[key], _CREATED[key] = handle, created
    _remove_interrupted_writes(folder)
    return folder


def release(folder: Path) -> None:
    """Let go of a folder claimed by this process (library callers; scripts hold theirs to the end)."""
    key = Path(folder).resolve()
    handle = _HELD.pop(key, None)
    _CREATED.pop(key, None)
    _PREVIOUS.pop(key, None)
    if handle is not None:
        os.close(handle)


def abandon() -> None:
    """Give back every claim of a run refused as bad input: remove the lock files and folders
    that claiming created, where nothing else has been written into them since."""
    for key in list(_HELD):
        created = _CREATED.get(key, [None])
        if created[0] is not None:  # the lock file this claim created, still held
            created[0].unlink(missing_ok=True)
        else:
            os.ftruncate(_HELD[key], 0)
            os.pwrite(_HELD[key], _PREVIOUS.get(key, b""), 0)
        if not contents(key):
            _remove_created(created[1:])
        release(key)


def _remove_created(folders: list[Path]) -> None:
    """Remove the folders a claim created, innermost first, while they are empty."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:  # no longer empty, or gone: leave it and the folders above it
            return


def _holder(handle: int) -> str:
    try:
        record = json.loads(os.pread(handle, 4096, 0) or b"{}")
        command = " ".join(record.get("command", [])[:1])
        return f"PID {record['pid']} ({command} on {record['host']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _remove_interrupted_writes(folder: Path) -> None:
    """Our temporary files in the claimed folder and in its subfolders that no other writer claims
    (those have a lock file of their own)."""
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not (p / LOCK_FILE).exists()]
    for path in [folder, *subfolders]:
        for name in os.listdir(path):
            if TEMPORARY.match(name) and (path / name).is_file():
                (path / name).unlink(missing_ok=True)


def staging_names(out: Path) -> tuple[Path, Path]:
    """The sibling folders `write_staged` swaps through, named so that no one else's could match."""
    return out.with_name(f".{out.name}.regimen-staging"), out.with_name(f".{out.name}.regimen-old")


def write_staged(out: Path, entries: dict[str, bytes | Path]) -> None:
    """Write `entries` (bytes, or a file to copy) into a sibling staging folder, then swap it in for
    `out`: a kill leaves the old folder or the new one, never a mix. A held lock moves along."""
    out = Path(out)
    staging, old = staging_names(out)
    for leftover in (staging, old):  # a killed swap's, named by this function alone
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, entry in entries.items():
        if isinstance(entry, Path):
            shutil.copyfile(entry, staging / name)
        else:
            (staging / name).write_bytes(entry)
    if (out / LOCK_FILE).exists():
        os.replace(out / LOCK_FILE, staging / LOCK_FILE)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def clear(folder: Path, kind: FolderKind) -> None:
    """Remove what this kind of script wrote in a claimed folder, the vouching file first, so a
    kill part-way never leaves an old run that looks resumable."""
    for name in (*kind.files, *kind.folders):
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
