"""``precise_bn`` / ``precise_bn_batch_size``: BatchNorm statistics recomputed on training batches before
validation.

During training each BatchNorm layer keeps an exponential average of batch statistics that lags behind the
weights; precise BN replaces it with the plain average over ``precise_bn_batch_size`` training samples seen by
the model being validated (the EMA model when ``ema`` is on), as in "Rethinking Batch in BatchNorm" (Wu & Johnson).
The forward passes run in train mode without gradients, through ``torch.optim.swa_utils.update_bn`` (which
resets the statistics and averages with ``momentum=None``); under DDP the ranks' statistics are then averaged.
The batches are the first ones of the current epoch's resumable order, so a resumed run recomputes the same
statistics, and no global random number is consumed out of turn (RNG states are saved and put back).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from super_recipes.data.samplers import epoch_batches, seeded_rngs
from super_recipes.engine.devices import to_device
from super_recipes.engine.distributed import all_reduce_mean

DEFAULT_GLOBAL_BATCHES = 8


def recompute_batchnorm_statistics(net: torch.nn.Module, trainer: Any, context: Any) -> int:
    """Recompute ``net``'s BatchNorm running statistics; returns the number of batches used (0: no BN layer)."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    loader, world, params = trainer.train_loader, trainer.world, trainer.params
    batch_size = getattr(loader, "batch_size", None) or 1
    samples = params.precise_bn_batch_size or DEFAULT_GLOBAL_BATCHES * batch_size * world.size
    count = max(1, math.ceil(samples / (batch_size * world.size)))
    if trainer.train_batches_per_epoch:
        count = min(count, trainer.train_batches_per_epoch)
    inputs = (to_device(batch[0], trainer.device) for _, batch in epoch_batches(loader, context.epoch, 0, count))
    with seeded_rngs(hash((params.seed, context.epoch)) % 2**31), trainer.autocast():
        torch.optim.swa_utils.update_bn(itertools.islice(inputs, count), net)
    for norm in norms:
        if norm.running_mean is not None:
            norm.running_mean.copy_(all_reduce_mean(norm.running_mean, world))
            norm.running_var.copy_(all_reduce_mean(norm.running_var, world))
    return count
