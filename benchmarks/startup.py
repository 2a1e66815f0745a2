"""Seconds from process start to the end of the first optimizer step of the default recipe.

    python benchmarks/startup.py [--repeats 5] [extra overrides...]

Runs ``python -m super_recipes.train_from_recipe`` as a user does (default recipe ``shapes_resnet``) with a
callback that reports the time at its first ``on_train_batch_gradient_step_end`` and stops the process. Also
prints the bare ``import torch`` time for reference.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PROBE = textwrap.dedent("""
    import os, time
    from super_recipes.callbacks import Callback
    from super_recipes.registry import register_callback

    @register_callback
    class FirstStepProbe(Callback):
        def on_train_batch_gradient_step_end(self, context):
            elapsed = time.time() - float(os.environ["STARTUP_T0"])
            print(f"FIRST_STEP {elapsed:.3f}", flush=True)
            os._exit(0)
""")


def timed(cmd: list[str], cwd: str, env: dict) -> float:
    env = {**env, "STARTUP_T0": repr(time.time())}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("FIRST_STEP"):
            return float(line.split()[1])
    raise RuntimeError(out.stderr[-2000:])


def main() -> None:
    repeats = 5
    extra = sys.argv[1:]
    if extra[:1] == ["--repeats"]:
        repeats, extra = int(extra[1]), extra[2:]
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "startup_probe.py").write_text(PROBE)
        env = {**os.environ, "PYTHONPATH": folder + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [sys.executable, "-m", "super_recipes.train_from_recipe", "imports=[startup_probe]",
               "training_hyperparams.phase_callbacks=[FirstStepProbe]", f"ckpt_root_dir={folder}/ckpt", *extra]
        timed(cmd, folder, env)  # warm the file cache and .pyc files
        runs = [timed(cmd, folder, env) for _ in range(repeats)]
        torch_cmd = [sys.executable, "-c", "import os,time,torch; print('FIRST_STEP', "
                     "round(time.time()-float(os.environ['STARTUP_T0']),3))"]
        torch_runs = [timed(torch_cmd, folder, env) for _ in range(repeats)]
    print(f"python -c 'import torch'         : {statistics.median(torch_runs):.2f} s (median of {repeats})")
    print(f"process start -> first step done : {statistics.median(runs):.2f} s (median of {repeats}, "
          f"min {min(runs):.2f}; target < 3.5)")


if __name__ == "__main__":
    main()
