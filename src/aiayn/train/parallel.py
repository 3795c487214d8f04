"""How the model is spread over torchrun's processes, applied from outside the model (which stays written for one
device): `train.parallel: ddp` (a whole copy on every process, gradients all-reduced) or `fsdp` (FSDP2,
`torch.distributed.fsdp.fully_shard`: parameters, gradients and Adam's state sharded over the processes, one unit
per encoder / decoder layer plus the root unit, gathered layer by layer for the forward and the backward).

Gradient reduction. The trainer divides the summed loss of each process by the target tokens of the whole step
(all processes, all micro-batches), so the gradients must be *summed* over processes. DDP averages, hence its
loss is multiplied by the process count (`loss_scale`). FSDP is told to sum, with a divide factor of 1, instead of
averaging: gloo has no ReduceOp.AVG (PyTorch issue 162338 reports FSDP's average summing on gloo) and no
PREMUL_SUM, and a plain sum is exact on every backend.

Units. Every layer of `model.encoder.layers` and `model.decoder.layers` is a unit; the rest (embeddings, the tied
pre-softmax Linear, final norms) is the root unit, the LossModel, so tied weights stay in one unit and the output
projection the loss reads is gathered for the whole forward. A model without such stacks (the recurrent family)
is one unit: sharded at rest, gathered whole for each forward.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from aiayn.config import RunConfig, TrainConfig
from aiayn.errors import ConfigError
from aiayn.train.distributed import Dist

__all__ = ["Parallel", "eval_model", "layer_units", "local_bytes", "recompute_layers", "state_line", "whole_weights",
           "wrap"]  # fmt: skip

# FSDP's mixed precision: parameters cast for the forward and backward, gradients reduced in fp32.
PARAM_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def layer_units(model: nn.Module) -> list[nn.Module]:
    """The layers that are units of their own: every encoder and decoder layer, in order."""
    units: list[nn.Module] = []
    for stack in ("encoder", "decoder"):
        layers = getattr(getattr(model, stack, None), "layers", None)
        if isinstance(layers, nn.ModuleList):
            units.extend(layers)
    return units


def recompute_layers(model: nn.Module) -> int:
    """train.activation_checkpointing: each layer keeps only its input for the backward and recomputes the rest
    there (torch.utils.checkpoint, non-reentrant; the RNG state is restored, so dropout draws the same masks).
    The modules and their state_dict stay as they are. Returns the number of layers."""
    units = layer_units(model)
    for layer in units:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
    return len(units)


def local_bytes(tensors) -> int:
    """Bytes of these tensors this process holds: for FSDP's DTensors, the local shard only."""
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            local = t.to_local() if hasattr(t, "to_local") else t
            total += local.numel() * local.element_size()
    return total


def state_line(params: list[nn.Parameter], grads: list, optimizer, rank: int) -> str:
    """What one process holds of the training state, in bytes: parameters, gradients (between the backward and
    the update) and the optimizer's state (Adam: two moments per parameter, and a step count)."""
    moments = [t for state in optimizer.state.values() for t in state.values()]
    return (f"state held by process {rank}: parameters {local_bytes(params):,} B, gradients "
            f"{local_bytes(grads):,} B, optimizer {local_bytes(moments):,} B")  # fmt: skip


class Parallel:
    """The forward module for the loop (`module`), the factor its loss is scaled by before dividing by the step's
    tokens (`loss_scale`), and gradient synchronisation for accumulation (`sync(last)`)."""

    def __init__(self, module: nn.Module, kind: str, loss_scale: float) -> None:
        self.module, self.kind, self.loss_scale = module, kind, loss_scale

    def sync(self, last: bool):
        """A context for one micro-batch's forward and backward: gradients are reduced over processes only on the
        last micro-batch of a step (DDP's no_sync; FSDP's set_requires_gradient_sync)."""
        if self.kind == "ddp" and not last:
            return self.module.no_sync()
        if self.kind == "fsdp":
            self.module.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def gather(self, into: nn.Module | None) -> None:
        """FSDP: copy the whole weights into `into`, rank 0's plain copy of the model for validation and decoding
        (collective: every process calls it; `into` is None on the others). Calling the sharded layers on rank 0
        alone would wait forever for the other processes' shards."""
        if self.kind == "fsdp":
            weights = whole_weights(self.module.model)
            if into is not None:
                into.load_state_dict(weights)


def whole_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """An FSDP-sharded model's weights gathered whole onto rank 0's CPU (empty on the other ranks; collective).
    Tied parameters (one object under several names) come back as one tensor under each name, so a model folder
    stores them once."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tied_to = first.setdefault(id(param), name)
        if weights and tied_to != name:
            weights[name] = weights[tied_to]
    return weights


def eval_model(model: nn.Module, config: RunConfig, dist: Dist) -> nn.Module | None:
    """The module rank 0 validates and decodes with: the model itself, or with FSDP (whose layers gather their
    shards from every process, so rank 0 cannot call them alone) a plain copy on rank 0 that `Parallel.gather`
    fills before each evaluation; None on the other processes."""
    if not (dist.active and config.train.parallel == "fsdp"):
        return model
    if not dist.is_main:
        return None
    from aiayn.model import build, use_kernels
    from aiayn.train.precision import kernels_for

    plain = build(config.model).to(dist.device)
    use_kernels(plain, kernels_for(dist.device, config.train.precision, config.train.matmul_precision))
    return plain


def wrap(loss_model: nn.Module, train: TrainConfig, dist: Dist) -> Parallel:
    """`loss_model` (aiayn.train.loss.LossModel) as the loop runs it: alone for one process, in DDP or sharded by
    FSDP2 for several. The plain model inside stays the one the trainer saves and evaluates."""
    if not dist.active:
        return Parallel(loss_model, "single", 1.0)
    if train.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return Parallel(DistributedDataParallel(loss_model), "ddp", float(dist.world_size))
    if train.compile:
        raise ConfigError("train.compile with train.parallel='fsdp' is not supported: use train.parallel='ddp' "
                          "to compile, or train.compile=false")  # fmt: skip
    return Parallel(_fully_shard(loss_model, train, dist), "fsdp", 1.0)


def _fully_shard(loss_model: nn.Module, train: TrainConfig, dist: Dist) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not hasattr(torch.distributed.fsdp.FSDPModule, "set_force_sum_reduction_for_comms"):
        raise ConfigError(f"train.parallel='fsdp' needs a newer torch than {torch.__version__} (FSDP2's sum "
                          "reduction); use train.parallel='ddp'")  # fmt: skip
    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    dtype = PARAM_DTYPE.get(train.precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
    units = [*layer_units(loss_model.model), loss_model]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    for unit in units:
        unit.set_force_sum_reduction_for_comms(True)
        unit.set_gradient_divide_factor(1.0)
    return loss_model
