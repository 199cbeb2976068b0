"""Small utilities every package of omnifuse shares: JSON-safe values and the one progress display.

- :func:`json_safe`: numpy scalars to Python numbers, NaN and infinities to ``null``, paths to strings, tuples
  to lists, dict keys to strings (recursively), so that ``json.dumps`` never fails and never writes ``NaN``.
- :func:`make_progress`: the rich progress display of extraction, training and studies. When the output is
  not a terminal (a log file, a batch job), rich draws nothing until the end; the display then logs one line
  per task at most every ``log_every`` seconds, so progress stays visible in a log.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("omnifuse.progress")


def json_safe(o: Any) -> Any:
    """``o`` with every value JSON can hold as it is, and NaN/inf as None (see the module docstring)."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    ndim = getattr(o, "ndim", None)
    if ndim is not None and callable(getattr(o, "tolist", None)):  # numpy scalars and arrays, tensors
        o = o.tolist()
        if ndim:
            return json_safe(o)
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    return o


def ensure_writable(folder: Path) -> Path:
    """Create ``folder`` (and its parents) and check a file can be written in it, before any work is done;
    ``PermissionError`` with a one-line message naming the folder otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".omnifuse-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write to {folder} ({e.strerror or e}); choose another folder") from e
    return folder


def save_arrays(path: Path, arrays: dict[str, Any]) -> None:
    """``np.savez_compressed(path, **arrays)``: arrays by name in one compressed ``.npz`` file."""
    np.savez_compressed(path, **arrays)


def make_progress(*, rate: bool = False, log_every: float = 30.0, console: Any = None) -> Any:
    """A rich ``Progress`` with description, bar, count, an ``info`` field, and (``rate``) items per second.

    Without ``rate``, tasks added to it must give ``info=""`` (a field shown after the count). On a
    non-terminal output the progress is also logged (see the module docstring). ``console``: a rich
    ``Console`` to draw on (default: standard error)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:.1f} items/s" if task.speed else "- items/s")

    class _LoggedProgress(Progress):
        """Logs ``description: completed/total info`` when the console is not a terminal."""

        _last: dict[Any, float]

        def update(self, task_id: Any, **kw: Any) -> None:
            super().update(task_id, **kw)
            self._log(task_id)

        def advance(self, task_id: Any, advance: float = 1) -> None:
            super().advance(task_id, advance)
            self._log(task_id)

        def _log(self, task_id: Any) -> None:
            if self.console.is_terminal:
                return
            now = time.monotonic()
            last = self.__dict__.setdefault("_last", {})
            t = next((k for k in self.tasks if k.id == task_id), None)
            done = t is not None and t.total is not None and t.completed >= t.total
            if t is not None and (done or now - last.get(task_id, 0.0) >= log_every):
                last[task_id] = now
                total = "?" if t.total is None else f"{t.total:g}"
                log.info("%s: %g/%s %s", t.description, t.completed, total, t.fields.get("info", ""))

    cols: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    cols.append(_Rate() if rate else TextColumn("{task.fields[info]}"))
    cols.append(TimeElapsedColumn())
    return _LoggedProgress(*cols, transient=False, redirect_stderr=sys.stderr.isatty(), console=console)
