"""SIGTERM / SIGINT during training: finish the current optimizer step, save, and stop with a resume hint.

Pre-emptible machines send SIGTERM; users press Ctrl-C. Either way the loop must not die mid-step (losing the
work since the last checkpoint) nor mid-save. A second Ctrl-C while the first is being handled stops at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainingInterrupted(Exception):
    """Raised by the Trainer after it saved ``ckpt_latest.pth`` in response to a signal."""

    def __init__(self, signum: int, checkpoint: Any):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"{signal.Signals(signum).name} received; saved {checkpoint}")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 1)


class StopRequests:
    """Context manager: while active, SIGINT/SIGTERM only set :attr:`signum`; the loop checks it per step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user wants out now
        self.signum = signum
