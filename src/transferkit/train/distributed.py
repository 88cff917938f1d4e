"""Several processes training one model: what the loop and the jobs need to agree on.

Under ``torchrun --nproc_per_node N`` or ``accelerate launch --num_processes N`` every
process runs the same command. Each trains on its own share of the batches (Accelerate
shards the training loader), and they must then agree on everything else: the
gradients of each step (averaged here, see :func:`average_gradients`), the metrics of
an epoch, the early-stopping decision, the checkpoint a resumed run starts from. Only
the main process (rank 0) writes files; the others compute with it and exit without
writing anything.

Which process this is comes from the launcher's environment (``RANK``/``WORLD_SIZE``,
or MPI's), so asking costs nothing and imports no torch: a single-process run never
creates a process group. The collective helpers below are only called when
:func:`world_size` is above 1; they set up the process group through Accelerate's
``PartialState`` (gloo on CPUs, NCCL on GPUs), the one Accelerate's ``Accelerator``
uses too.
"""

from __future__ import annotations

import os

# The launchers' spellings, in the order Accelerate reads them (torchrun, then MPI flavours).
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _first_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                return default
    return default


def world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return max(1, _first_int(_WORLD_SIZE_VARIABLES, 1))


def process_index() -> int:
    """This process's rank among them (0 without a launcher)."""
    return _first_int(_RANK_VARIABLES, 0) if world_size() > 1 else 0


def is_main_process() -> bool:
    """Whether this process is the one that writes files and prints the summary."""
    return process_index() == 0


def is_distributed() -> bool:
    return world_size() > 1


def _state():
    """Accelerate's process state, set up on first use. ``cpu`` where no GPU is visible:
    Accelerate gives a launcher's processes a gloo process group (``MULTI_CPU``) only
    when told the run is on CPUs; otherwise, without a GPU, it runs each process alone."""
    import torch
    from accelerate.state import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def barrier() -> None:
    """Wait until every process got here (nothing to wait for in a single process)."""
    if is_distributed():
        _state().wait_for_everyone()


def broadcast_object(value=None):
    """The main process's ``value`` on every process (picklable; sent between our own
    processes only, never read from a file)."""
    if not is_distributed():
        return value
    import torch.distributed as dist

    _state()
    box = [value if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value) -> list:
    """Every process's ``value``, in rank order, on every process."""
    if not is_distributed():
        return [value]
    import torch.distributed as dist

    _state()
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def on_main_process(function, *args, **kwargs):
    """``function(*args, **kwargs)`` run by the main process only, its result handed to
    every process; an exception it raises is raised on every process, so all of them
    stop with the same one-line error instead of the others waiting for ever."""
    if not is_distributed():
        return function(*args, **kwargs)
    outcome = None
    if is_main_process():
        try:
            outcome = ("value", function(*args, **kwargs))
        except Exception as exc:  # handed on, then raised here too
            outcome = ("error", exc)
    try:
        kind, value = broadcast_object(outcome)
    except Exception as exc:  # an exception that does not pickle: its message does
        raise RuntimeError(f"the main process failed and its error could not be sent: {exc}")
    if kind == "error":
        raise value
    return value


# -- keeping the copies of a model identical ---------------------------------------------------

def broadcast_module(module) -> None:
    """Every process's parameters and buffers := the main process's (as DDP does when it
    wraps a model), so the copies start equal even when their initialisation differed."""
    if not is_distributed():
        return
    import torch.distributed as dist

    _state()
    with _no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_buffers(module) -> None:
    """Floating-point buffers (BatchNorm's running statistics) := their mean over the
    processes: each process saw its own share of the data, and validation must score
    one model, the same on every process. Integer buffers (batch counts) are equal."""
    if not is_distributed():
        return
    import torch
    import torch.distributed as dist

    _state()
    with _no_grad():
        for buffer in module.buffers():
            if torch.is_floating_point(buffer):
                dist.all_reduce(buffer.data, op=dist.ReduceOp.SUM)
                buffer.data.div_(world_size())


def average_gradients(parameters, has_items: bool) -> bool:
    """Average the gradients of ``parameters`` over the processes that had items in this
    step; returns False when none had any (every process then skips the step).

    Why not DDP: DDP synchronises gradients only for a forward pass through its wrapper,
    and transferkit's step functions call ``model.forward_features`` /
    ``model.forward_head`` (domain adaptation), several forward passes per step and
    parameters a stage leaves unused. One all-reduce of all gradients after the
    backward pass is correct for any step function; it forgoes DDP's overlap of
    communication with the backward pass. A parameter that got no gradient on any
    process keeps ``grad = None``, as in a single process (the optimiser then skips it).
    """
    import torch
    import torch.distributed as dist

    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        return has_items
    device = parameters[0].device
    grads = [p.grad if (p.grad is not None and has_items) else None for p in parameters]
    # Layout: every gradient flattened, then one flag per parameter (had a gradient
    # here), then one flag for the process (had items). Same on every process.
    flat = torch.cat([
        *[(g.detach().reshape(-1) if g is not None else torch.zeros(p.numel(), device=device,
                                                                    dtype=p.dtype)).float()
          for p, g in zip(parameters, grads)],
        torch.tensor([float(g is not None) for g in grads] + [float(has_items)],
                     device=device)])
    _state()
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    contributors = float(flat[-1])
    if contributors == 0:
        for p in parameters:
            p.grad = None
        return False
    flags = flat[-1 - len(parameters):-1]
    offset = 0
    for index, p in enumerate(parameters):
        n = p.numel()
        if float(flags[index]) == 0:
            p.grad = None
        else:
            # Each contributing process's batch mean, averaged: DDP's mean over processes,
            # leaving out a process whose batch held no readable image.
            mean = (flat[offset:offset + n] / contributors).view_as(p).to(p.dtype)
            if p.grad is not None:
                p.grad.copy_(mean)  # keeps the gradient's memory layout (channels_last)
            else:
                p.grad = mean
        offset += n
    return True


def _no_grad():
    import torch

    return torch.no_grad()


__all__ = ["average_buffers", "average_gradients", "barrier", "broadcast_module",
           "broadcast_object", "gather_objects", "is_distributed", "is_main_process",
           "on_main_process", "process_index", "world_size"]
