"""A writer thread: the store's writes run one job behind the caller, so that where a GPU computes, the next batch
is computed while this one is written.

The jobs run in the order they were submitted, exactly as they would in the caller's thread: a job that fails
stops the ones after it (they would build on it), and its error is raised in the caller's thread at the next
``submit`` or ``flush``. ``close`` runs every job submitted before it, also when the caller is failing: a batch
handed over counts as written for the caller, as it does when the writes run in the caller's thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class BackgroundWriter:
    """Runs submitted jobs ``fn(*args)`` in order in one daemon thread, started by the first job after a ``close``.

    The queue holds one job: the caller is never more than one job ahead of the writes (a batch of activations in
    memory, not a run's worth)."""

    def __init__(self, name: str = "alignit-probe-writer"):
        self.name = name
        self.error: BaseException | None = None  # the first job's failure; later jobs are skipped
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue ``fn(*args)`` (waits while the previous job is queued); raises a failed job's error first."""
        self.check()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        self._queue.put((fn, args))

    def check(self) -> None:
        """Raise the error of a job that failed (in the caller's thread)."""
        if self.error is not None:
            raise self.error

    def flush(self) -> None:
        """Wait until every submitted job has run; raises a failed job's error."""
        if self._thread is not None:
            self._queue.join()
        self.check()

    def close(self) -> None:
        """Run every job submitted so far, then stop the thread. Errors are kept for ``check``, not raised: this
        also runs while the caller's own exception propagates."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    item[0](*item[1])
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self.error = e
            finally:
                self._queue.task_done()
