"""Permissions of the files rusteeze writes: what any other tool would give them under the umask.

Temporary files and folders (``tempfile.mkstemp`` / ``mkdtemp``, used so results appear
atomically) are created private (0600 / 0700), and safetensors writes its files 0600;
the finished output gets 0666 / 0777 less the process's umask instead, as ``open()`` and
``mkdir`` would have given it.
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()


def umask() -> int:
    """The process's umask (read by setting it and putting it back, under a lock)."""
    with _lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new regular file: 0o666 without the umask's bits (0o644 under the usual 022)."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """Mode of a new directory: 0o777 without the umask's bits (0o755 under the usual 022)."""
    return 0o777 & ~umask()
