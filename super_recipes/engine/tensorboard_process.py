"""``launch_tensorboard`` / ``tensorboard_port``: a TensorBoard server on the experiment folder for the run's
duration, started as a child process (TensorBoard's own ``tensorboard.main``) and stopped when training ends."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

from super_recipes.engine.distributed import free_port
from super_recipes.errors import RecipeError

logger = logging.getLogger("super_recipes")


class TensorBoardProcess:
    """One TensorBoard server; :meth:`start` prints its address, :meth:`stop` ends it (and is safe to repeat)."""

    def __init__(self, logdir: Path, port: int | None = None):
        self.logdir = Path(logdir)
        self.port = port if port is not None else free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}/"

    def start(self) -> TensorBoardProcess:
        if not port_is_free(self.port):
            raise RecipeError(f"training_hyperparams.tensorboard_port {self.port} is in use; choose another port "
                              "or leave tensorboard_port null for a free one.")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir), "--port", str(self.port),
             "--host", "localhost", "--reload_interval", "5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        logger.info(f"TensorBoard: {self.url} (stopped when training ends)")
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
