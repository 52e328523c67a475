"""One training across processes: data parallel under ``torchrun``.

``torchrun --nproc_per_node N -m app.cli run|train-teacher …`` starts N copies with
RANK / WORLD_SIZE / LOCAL_RANK set; :func:`from_env` reads them (a plain run gets
:data:`SINGLE`, whose methods do nothing). Under torchrun every rank

- builds the same seeded model (and receives rank 0's weights when training starts),
- walks the same shuffled epoch and takes its contiguous slice of every global batch,
  with the crop/flip draws made for the whole global batch and sliced alike
  (``BatchStream(shard=…)``), so the ranks together see exactly the single-process batch,
- normalises with batch-norm statistics over the global batch (:class:`GlobalBatchNorm`,
  swapped in while training, so a checkpoint holds plain ``BatchNorm2d``),
- averages gradients over ranks after ``backward`` and logs losses averaged over ranks.

Rank 0 alone evaluates, writes the run folder and emits events (``Experiment``).
Gloo on the CPU, NCCL on CUDA. Losses that relate the images of a batch to each other
(PKT, RKD, the InDistill embedding loss) see each rank's slice, not the global batch.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT = datetime.timedelta(minutes=60)  # rank 0 evaluates while the others wait at the next collective


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced (summed) gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are taken over all ranks' batches; the
    statistics' all-reduce is differentiable, so gradients match one process with the
    global batch. Evaluation mode is plain batch norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.running_mean is None:
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), x.numel() // c, dtype=torch.float32, device=x.device)
        sums = _SumOverRanks.apply(torch.cat([xf.sum((0, 2, 3)), count]))
        n = sums[c]
        mean = sums[:c] / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = _SumOverRanks.apply(centred.square().sum((0, 2, 3))) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), m)
            self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks (``world == 1``: one process, nothing to do)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world

    def setup(self, device: str) -> None:
        """Join the process group (once per process): NCCL when training on CUDA, else gloo."""
        if not self.enabled or dist.is_initialized():
            return
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)

    def share_cores(self) -> None:
        """On the CPU, split this machine's threads between the ranks it runs."""
        if self.enabled and self.local_world > 1:
            torch.set_num_threads(max(1, torch.get_num_threads() // self.local_world))

    def from_main(self, obj):
        """Rank 0's value of ``obj`` on every rank (e.g. the run folder, whose id is random)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def training(self, model: nn.Module):
        """While training ``model``: rank 0's weights everywhere, batch norm over the global batch."""
        if not self.enabled:
            yield
            return
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)
        swapped = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
        for m in swapped:
            m.__class__ = GlobalBatchNorm
        try:
            yield
        finally:
            for m in swapped:
                m.__class__ = nn.BatchNorm2d

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """All-reduce the gradients of ``params`` as one flat buffer, divided by the world size."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean_values(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss components as floats, averaged over ranks (each rank's batch is the same size)."""
        if not self.enabled:
            return {k: float(v.detach()) for k, v in parts.items()}
        stacked = torch.stack([v.detach().float().reshape(()) for v in parts.values()])
        dist.all_reduce(stacked)
        return dict(zip(parts, (stacked / self.world).tolist()))


SINGLE = Dist()


def from_env() -> Dist:
    """The ranks torchrun describes in the environment; :data:`SINGLE` outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return SINGLE
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")),
                int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
