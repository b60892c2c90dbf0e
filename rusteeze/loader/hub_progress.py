"""A rich progress bar fed by huggingface_hub's `tqdm_class` hook.

`snapshot_download(tqdm_class=...)` instantiates the class three times: a bar over files
("Fetching N files", no unit), a network-bytes bar ("Downloading bytes", unit "B") and a
bytes-written bar (unit "B"). Each file's download adds its size to the bytes totals and
reports every chunk. We draw one rich task from them: bytes written against the total,
with the file count in its description. Anything else the library calls on a tqdm is a
no-op here, so a library update degrades the display, never the download.
"""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class PullProgress:
    """One rich progress display for one pull; `tqdm_class` is the adapter to hand to huggingface_hub."""

    def __init__(self, label: str, console: Console | None = None) -> None:
        self.label = label
        console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,  # nothing in logs or pipes
        )
        self.task: TaskID = self.progress.add_task(label, total=None)
        self.files_total = 0
        self.files_done = 0
        self.bytes_total = 0
        self._lock = threading.Lock()
        self.tqdm_class = _adapter(self)

    def __enter__(self) -> PullProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _describe(self) -> None:
        files = f" ({self.files_done}/{self.files_total} files)" if self.files_total else ""
        self.progress.update(self.task, description=f"{self.label}{files}")


def _adapter(owner: PullProgress) -> type:
    """Build a tqdm look-alike class bound to `owner` (huggingface_hub takes a class, not an instance)."""

    class _Bar:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            desc = str(kwargs.get("desc") or "")
            # "files": the per-file counter; "bytes": bytes written; None: the network bar, not drawn.
            if kwargs.get("unit") == "B":
                self.kind = None if desc.startswith("Downloading bytes") else "bytes"
            else:
                self.kind = "files"
            self.n = kwargs.get("initial") or 0
            self._total = kwargs.get("total") or 0
            self.format_dict: dict[str, Any] = {"rate": None}
            if self.kind == "files":
                owner.files_total = int(self._total)
                owner._describe()

        @property
        def total(self) -> int:
            return self._total

        @total.setter
        def total(self, value: int | None) -> None:
            self._total = value or 0
            if self.kind == "bytes":
                owner.bytes_total = int(self._total)
                owner.progress.update(owner.task, total=self._total or None)

        def update(self, n: float | None = 1) -> None:
            n = n or 0
            with owner._lock:
                self.n += n
                if self.kind == "bytes":
                    owner.progress.update(owner.task, completed=self.n)
                elif self.kind == "files":
                    owner.files_done = int(self.n)
                    owner._describe()

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            pass

        def set_description(self, *args: Any, **kwargs: Any) -> None:
            pass

        set_description_str = set_description
        set_postfix_str = set_description
        set_postfix = set_description

        def close(self) -> None:
            pass

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    return _Bar
