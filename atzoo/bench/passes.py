"""Counting the forward and backward passes of a training step.

A pass is counted where it enters a network: a forward hook on the network's *stem*
(its first convolution) sees every pass, whether it comes through ``model(x)`` or
``penultimate_features(model, x)``, and a tensor hook on the stem's output fires when a
backward pass reaches the stem (an attack's input gradient or the training backward).
Counts are in **batch equivalents**: images through the stem divided by the batch
size, so AR-AT's single forward of ``cat([x', x])`` counts as two passes.

The cost model of :func:`cost_units` (forward FLOPs ``F`` of one batch as the unit):

* a forward pass costs ``F`` (with or without an autograd graph);
* a backward pass of the *attack* costs ``F``: it needs only the gradient with
  respect to the activations (``torch.autograd.grad`` on the input), not the weights;
* a backward pass of the *training loss* costs ``2F``: activation and weight gradients.

So PGD-AT with 10 steps costs ``10 x (F + F) + (F + 2F) = 23F`` per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn

#: The phases of one training step: ``method.attack`` and the loss forward + backward.
PHASES: tuple[str, ...] = ("attack", "loss")


@dataclass
class PhaseCounts:
    """Images that passed through a network's stem in one phase.

    Attributes:
        forward: images of every forward pass.
        forward_no_graph: images of forward passes that built no autograd graph
            (``torch.no_grad()`` or a frozen network), a subset of ``forward``.
        backward: images whose backward pass reached the stem.
    """

    forward: int = 0
    forward_no_graph: int = 0
    backward: int = 0

    def scaled(self, batch_size: int) -> dict[str, float]:
        """The counts in batch equivalents."""
        return {"fwd": self.forward / batch_size, "fwd_no_graph": self.forward_no_graph / batch_size,
                "bwd": self.backward / batch_size}


@dataclass
class StepPasses:
    """Pass counts of one training step, per network and phase (batch equivalents)."""

    counts: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def total(self, key: str, phase: str | None = None, network: str | None = None) -> float:
        """Sum of ``key`` (``fwd``, ``fwd_no_graph``, ``bwd``) over networks and phases."""
        return sum(
            values[key]
            for net, phases in self.counts.items() if network in (None, net)
            for ph, values in phases.items() if phase in (None, ph)
        )

    def as_dict(self) -> dict[str, dict[str, dict[str, float]]]:
        return {net: {ph: dict(v) for ph, v in phases.items()} for net, phases in self.counts.items()}


def cost_units(passes: StepPasses) -> float:
    """The step's cost in forward-pass units ``F`` (see the module docstring).

    Every counted network is weighted equally, which holds when the teacher or the
    frozen reference has the trained model's architecture (as ``atzoo bench`` builds them).
    """
    forwards = passes.total("fwd")
    return forwards + passes.total("bwd", phase="attack") + 2.0 * passes.total("bwd", phase="loss")


def find_stem(network: nn.Module) -> nn.Module:
    """The module every pass of ``network`` goes through first: its first convolution.

    Falls back to the first module holding parameters, then to the network itself.
    """
    for module in network.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return module
    for module in network.modules():
        if next(module.parameters(recurse=False), None) is not None:
            return module
    return network


class PassCounter:
    """Counts the passes through several networks, split by the phase set by the caller.

    Example::

        counter = PassCounter({"model": model, "teacher": teacher}, batch_size=32)
        with counter.counting():
            counter.phase = "attack"; x_adv = method.attack(...)
            counter.phase = "loss"; loss = ...; loss.backward()
        counter.result().as_dict()["model"]["attack"]["fwd"]   # 10.0 for PGD-10
    """

    def __init__(self, networks: dict[str, nn.Module], batch_size: int) -> None:
        self.networks = networks
        self.batch_size = batch_size
        self.phase = PHASES[0]
        self._counts = {name: {ph: PhaseCounts() for ph in PHASES} for name in networks}

    @contextmanager
    def counting(self) -> Iterator["PassCounter"]:
        """Installs the hooks for the duration of the block."""
        handles = [find_stem(net).register_forward_hook(self._forward_hook(name))
                   for name, net in self.networks.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            counts = self._counts[name][self.phase]
            images = int(output.shape[0])
            counts.forward += images
            if not output.requires_grad:
                counts.forward_no_graph += images
                return

            # The phase of the backward is the phase of its forward (the training
            # backward runs after the loss forward, still in the "loss" phase).
            def backward_hook(grad: Tensor) -> None:
                counts.backward += int(grad.shape[0])

            output.register_hook(backward_hook)

        return hook

    def result(self) -> StepPasses:
        """The counts so far, in batch equivalents."""
        return StepPasses({name: {ph: c.scaled(self.batch_size) for ph, c in phases.items()}
                           for name, phases in self._counts.items()})


__all__ = ["PHASES", "PassCounter", "PhaseCounts", "StepPasses", "cost_units", "find_stem"]
