"""DDP on CPU with gloo, as users debug it without GPUs: relaunch from the recipe, equivalence with one process,
two torchrun "nodes", and a failing worker stopping the run."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from super_recipes import Trainer, dataloaders, models
from super_recipes.engine.checkpoints import load_checkpoint
from super_recipes.engine.distributed import free_port
from tests.conftest import run_cli

HELPERS = textwrap.dedent("""
    import os
    import torch
    from super_recipes.callbacks import Callback
    from super_recipes.registry import register_callback, register_model

    @register_model("tiny_mlp")
    def tiny_mlp(num_classes: int = 6):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 32), torch.nn.ReLU(),
                                   torch.nn.Linear(32, num_classes))

    @register_callback
    class KillOnRank(Callback):
        # SIGKILLs rank 1 at the optimizer step given by KILL_STEP (when set).
        def on_train_batch_end(self, context):
            step = os.environ.get("KILL_STEP")
            if step and int(os.environ.get("RANK", 0)) == 1 and context.global_step == int(step):
                os.kill(os.getpid(), 9)

    @register_callback
    class CountValidation(Callback):
        # Appends "epoch samples pixel_sum" of each validation pass to val_rank<RANK>.txt in the working folder.
        def on_validation_loader_start(self, context):
            self.count, self.total = 0, 0.0
        def on_validation_batch_end(self, context):
            self.count += len(context.inputs)
            self.total += float(context.inputs.double().sum())
        def on_validation_loader_end(self, context):
            with open(f"val_rank{os.environ.get('RANK', 0)}.txt", "a") as f:
                print(context.epoch, self.count, repr(self.total), file=f)

    @register_callback
    class FailOnRank(Callback):
        def __init__(self, rank: int = 1, step: int = 3):
            self.rank, self.step = rank, step
        def on_train_batch_end(self, context):
            if int(os.environ.get("RANK", 0)) == self.rank and context.global_step == self.step:
                raise RuntimeError(f"boom on rank {self.rank}")
""")

SMALL = ["device=cpu", "epochs=2", "training_hyperparams.max_train_batches=6", "num_workers=0",
         "dataset_params.val_dataset_params.num_samples=300", "val_batch_size=64"]


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "ddp_helpers.py").write_text(HELPERS)
    return tmp_path


def _run(workdir, args):
    return run_cli(["imports=[ddp_helpers]", *args], cwd=workdir, env={"PYTHONPATH": str(workdir)})


def test_ddp_relaunch_trains_and_validates_every_sample_once(workdir):
    samples = 301  # odd: the two shards differ in size (151 + 150), as a DistributedSampler would not allow
    result = _run(workdir, [*SMALL, "multi_gpu=DDP", "num_gpus=2", f"ckpt_root_dir={workdir / 'ckpt'}",
                            f"dataset_params.val_dataset_params.num_samples={samples}",
                            "training_hyperparams.phase_callbacks=[CountValidation]"])
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (workdir / "ckpt").iterdir()] == ["shapes_resnet"]  # one folder for all ranks
    folder = workdir / "ckpt" / "shapes_resnet"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1 and (folder / "train.log").is_file()
    assert result.stderr.count("Epoch 2/2") == 1  # rank 1 stays quiet
    last = list(csv.DictReader((folder / "metrics.csv").open()))[-1]

    # A single-process evaluation of the saved weights on the same validation set gives the same numbers.
    model = models.get("resnet_tiny_cifar", num_classes=6)
    model.load_state_dict(load_checkpoint(folder / "ckpt_latest.pth")["net"])
    loader = dataloaders.get("shapes_val", dataset_params={"num_samples": samples},
                             dataloader_params={"batch_size": 64})
    recipe_loss = {"CrossEntropyLoss": {"label_smoothing": 0.05}}  # shapes_resnet_train_params.yaml
    single = Trainer("eval", workdir / "eval", device="cpu").test(model, loader, ["Accuracy"], loss=recipe_loss)
    assert float(last["valid/Accuracy"]) == pytest.approx(single["test/Accuracy"], abs=1e-9)
    assert float(last["valid/CrossEntropyLoss"]) == pytest.approx(single["test/CrossEntropyLoss"], rel=1e-5)

    # Each epoch the two ranks together saw every validation sample exactly once: the counts add up and so do
    # the pixel sums (a repeated or a missing sample changes the sum).
    pixel_sum = sum(float(inputs.double().sum()) for inputs, _ in loader)
    passes = [[line.split() for line in (workdir / f"val_rank{r}.txt").read_text().splitlines()] for r in (0, 1)]
    assert [[int(p[0]) for p in rank] for rank in passes] == [[0, 1], [0, 1]]
    for epoch in (0, 1):
        counts = [int(rank[epoch][1]) for rank in passes]
        assert sorted(counts) == [150, 151]
        assert sum(float(rank[epoch][2]) for rank in passes) == pytest.approx(pixel_sum, rel=1e-12)


def test_ddp_batch_b_equals_one_process_with_batch_2b(workdir):
    common = [*SMALL, "architecture=tiny_mlp", "arch_params=default_arch_params",
              "training_hyperparams.optimizer_params.momentum=0.9",
              "training_hyperparams.optimizer_params.weight_decay=1e-4", "training_hyperparams.criterion_params={}",
              "dataset_params.val_dataset_params.num_samples=64"]
    ddp = _run(workdir, [*common, "multi_gpu=DDP", "num_gpus=2", "batch_size=16",
                         f"ckpt_root_dir={workdir / 'ddp'}"])
    assert ddp.returncode == 0, ddp.stderr
    single = _run(workdir, [*common, "batch_size=32", f"ckpt_root_dir={workdir / 'one'}"])
    assert single.returncode == 0, single.stderr
    a = load_checkpoint(workdir / "ddp" / "shapes_resnet" / "ckpt_latest.pth")["net"]
    b = load_checkpoint(workdir / "one" / "shapes_resnet" / "ckpt_latest.pth")["net"]
    assert set(a) == set(b) and not any(k.startswith("module.") for k in a)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def test_two_torchrun_nodes(workdir):
    port = free_port()
    # The rendezvous store lives in this process, as on a cluster where it outlives the nodes: otherwise the node
    # that hosts it may exit first and the other node's agent fails to say goodbye to it.
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    env = {**os.environ, "PYTHONPATH": str(workdir), "OMP_NUM_THREADS": "1"}
    commands = [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}",
                 "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                 "--rdzv-id=two-nodes", "-m", "super_recipes.train_from_recipe", "imports=[ddp_helpers]", *SMALL,
                 "epochs=1", f"ckpt_root_dir={workdir / 'nodes'}"] for rank in (0, 1)]
    nodes = [subprocess.Popen(c, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    del store
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)
    state = load_checkpoint(workdir / "nodes" / "shapes_resnet" / "ckpt_latest.pth")
    assert state["global_step"] == 6 and len(state["rank_states"]) == 2


def test_a_failing_worker_stops_the_run(workdir):
    result = _run(workdir, [*SMALL, "multi_gpu=DDP", "num_gpus=2", f"ckpt_root_dir={workdir / 'fail'}",
                            "training_hyperparams.phase_callbacks=[{FailOnRank: {rank: 1, step: 3}}]"])
    assert result.returncode != 0
    assert "boom on rank 1" in result.stderr and "rank 1" in result.stderr.splitlines()[-1]


def test_off_with_several_devices_is_refused(tmp_path):
    result = run_cli(["multi_gpu=Off", "num_gpus=2", "device=cpu"], cwd=tmp_path)
    assert result.returncode == 1 and "multi_gpu=DDP" in result.stderr and "Traceback" not in result.stderr


def test_ddp_resume_after_a_kill_is_exact(workdir):
    common = [*SMALL, "multi_gpu=DDP", "num_gpus=2", "training_hyperparams.ckpt_every_n_steps=2",
              "training_hyperparams.phase_callbacks=[KillOnRank]", "training_hyperparams.ema=true",
              "dataset_params.val_dataset_params.num_samples=64"]
    reference = _run(workdir, [*common, f"ckpt_root_dir={workdir / 'ref'}"])
    assert reference.returncode == 0, reference.stderr
    args = [*common, f"ckpt_root_dir={workdir / 'killed'}"]
    killed = run_cli(["imports=[ddp_helpers]", *args], cwd=workdir,
                     env={"PYTHONPATH": str(workdir), "KILL_STEP": "9"})
    assert killed.returncode != 0 and "rank 1 (exit code -9)" in killed.stderr  # a SIGKILLed worker ends the run
    resumed = _run(workdir, [*args, "resume=true"])
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(workdir / "ref" / "shapes_resnet" / "ckpt_latest.pth")
    b = load_checkpoint(workdir / "killed" / "shapes_resnet" / "ckpt_latest.pth")
    for key in ("net", "ema_net"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    rows = [list(csv.DictReader((workdir / d / "shapes_resnet" / "metrics.csv").open())) for d in ("ref", "killed")]
    for row in rows[0] + rows[1]:
        row.pop("epoch_time")
    assert rows[0] == rows[1]


RANK_ZERO_ALONE = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from torchmetrics.classification import MulticlassAccuracy
    from super_recipes.engine.evaluation import compute_alone
    from super_recipes.metrics import Accuracy

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[1]}", rank=int(sys.argv[2]),
                            world_size=2)
    if dist.get_rank() == 0:  # an evaluation rank 0 runs alone (average_model.pth, test()): no collectives
        preds, target = torch.eye(4)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 3])
        for metric in (MulticlassAccuracy(num_classes=4, average="micro"), Accuracy()):
            compute_alone(metric)
            metric.update(preds, target)
            print(type(metric).__name__, float(metric.compute()), flush=True)
    dist.barrier()
    dist.destroy_process_group()
""")


def test_an_evaluation_that_rank_zero_runs_alone_needs_no_other_rank(tmp_path):
    script = tmp_path / "alone.py"
    script.write_text(RANK_ZERO_ALONE)
    port = str(free_port())
    workers = [subprocess.Popen([sys.executable, str(script), port, str(rank)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs
    assert outputs[0][0].split() == ["MulticlassAccuracy", "0.75", "Accuracy", "0.75"]
