"""Atomic file writes: a temp file in the same directory, fsync, then ``os.replace``.

A reader therefore sees either the old file, no file, or the complete new one; never a
half-written result. ``metrics.json`` is written last by the task, so its existence
marks a complete run.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

RESOLVED_CONFIG = "resolved_config.yaml"
METRICS = "metrics.json"
SPECTRA = "spectra.npz"
ERROR = "error.txt"
# Kernel stages saved while a point runs (resume after a requeue); see _task._Stages.
STAGES = "stages.json"
STAGES_DIR = "stages"
RESULT_FILES = (RESOLVED_CONFIG, METRICS, SPECTRA)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (same-directory temp file + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            # mkstemp creates 0600; give the file the mode open() would (0666 & ~umask).
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj) -> None:
    """Strict JSON (no NaN/Inf), sorted keys: identical dicts give equal bytes."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_text_atomic(path, text)


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())
