"""Seconds from process start to the end of the first optimizer step: the recipe runner against a plain script
doing the same work.

    python benchmarks/startup.py [--repeats 7]

Both sides are fresh processes started by this script, interleaved (plain, runner, plain, runner...), after one
warm-up run each (file cache, ``.pyc`` files). The work is the default recipe's: ``resnet_tiny_cifar`` with 6
classes, the offline shapes dataset (20,000 samples, batch 128, shuffled), SGD with Nesterov momentum, label
smoothing, one optimizer step. The runner is ``python -m super_recipes.train_from_recipe`` as a user types it,
with a callback reporting the time at its first ``on_train_batch_gradient_step_end``; it composes and checks
the recipe, builds metrics, callbacks, logging and the experiment folder on top of that work.

Prints the median time of each side, the median of the paired differences (target: within 0.5 s), and the bare
``import torch`` time for reference.
"""

from __future__ import annotations

import argparse
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
            print(f"FIRST_STEP {time.time() - float(os.environ['STARTUP_T0']):.4f}", flush=True)
            os._exit(0)
""")

PLAIN = textwrap.dedent("""
    import os, time
    import torch
    from torch.utils.data import DataLoader

    from super_recipes.data.shapes import ShapesClassificationDataset
    from super_recipes.data.transforms import ToFloatTensor
    from super_recipes.models.classification import resnet_tiny_cifar

    torch.manual_seed(42)
    model = resnet_tiny_cifar(num_classes=6)
    dataset = ShapesClassificationDataset(split="train", num_samples=20000, image_size=32, seed=0,
                                          transforms=[ToFloatTensor()])
    loader = DataLoader(dataset, batch_size=128, shuffle=True, drop_last=True, num_workers=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    inputs, targets = next(iter(loader))
    loss_fn(model(inputs), targets).backward()
    optimizer.step()
    print(f"FIRST_STEP {time.time() - float(os.environ['STARTUP_T0']):.4f}", flush=True)
""")


def timed(cmd: list[str], cwd: str, env: dict[str, str]) -> float:
    env = {**env, "STARTUP_T0": repr(time.time())}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("FIRST_STEP"):
            return float(line.split()[1])
    raise RuntimeError(f"{' '.join(cmd)} printed no FIRST_STEP:\n{out.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "startup_probe.py").write_text(PROBE)
        Path(folder, "plain_first_step.py").write_text(PLAIN)
        env = {**os.environ, "PYTHONPATH": folder + os.pathsep + os.environ.get("PYTHONPATH", "")}
        runner = [sys.executable, "-m", "super_recipes.train_from_recipe", "imports=[startup_probe]",
                  "training_hyperparams.phase_callbacks=[FirstStepProbe]", f"ckpt_root_dir={folder}/ckpt"]
        plain = [sys.executable, str(Path(folder, "plain_first_step.py"))]
        timed(plain, folder, env), timed(runner, folder, env)  # warm-up
        pairs = [(timed(plain, folder, env), timed(runner, folder, env)) for _ in range(args.repeats)]
        torch_only = [timed([sys.executable, "-c", "import os,time,torch; print('FIRST_STEP', "
                             "time.time()-float(os.environ['STARTUP_T0']))"], folder, env)
                      for _ in range(args.repeats)]
    plain_s, runner_s = statistics.median(p for p, _ in pairs), statistics.median(r for _, r in pairs)
    gap = statistics.median(r - p for p, r in pairs)
    print(f"python -c 'import torch'           : {statistics.median(torch_only):.2f} s")
    print(f"plain script, first step done      : {plain_s:.2f} s (median of {args.repeats})")
    print(f"recipe runner, first step done     : {runner_s:.2f} s (median of {args.repeats}; target < 3.5)")
    print(f"runner - plain (median of pairs)   : {gap:+.2f} s (target <= +0.5)")


if __name__ == "__main__":
    main()
