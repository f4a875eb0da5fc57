"""Sampling speed-ups of the flow-matching pipeline (defaults on the CPU, each switchable).

``SamplingNet`` is an inference view of a ``VelocityNet`` that prepares the conditions once per
batch; ``OneDNNLinear`` runs ``nn.Linear`` through oneDNN; ``retain_freed_heap`` keeps glibc's freed
memory while sampling. Why, and how much each gives: docs/generators.md, "Sampling speed".
"""

from __future__ import annotations

import copy
import ctypes
import functools
import itertools
import platform
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from thyroaug.generators.flow_matching.model import VelocityNet


# --------------------------------------------------------------------------------------------
# The inference view of the net
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def onednn_linear_available() -> bool:
    """Whether ``torch.ops.mkldnn._linear_pointwise`` (oneDNN fp32 inner product) works here."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        x, w, b = torch.randn(3, 5, 8), torch.randn(4, 8), torch.randn(4)
        with torch.inference_mode():
            y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return bool(torch.allclose(y, F.linear(x, w, b), atol=1e-5))
    except Exception:  # an older / other build without the op
        return False


class OneDNNLinear(nn.Module):
    """``nn.Linear`` evaluated by oneDNN's fp32 inner product (CPU inference; same parameters).

    With grad enabled, on other devices or dtypes and under ``torch.compile`` it is ``F.linear``.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight  # the same Parameter objects, not copies
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        ):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class SamplingNet(nn.Module):
    """Inference view of a ``VelocityNet`` for ODE sampling: bitwise the net's output.

    Shares the net's parameter and buffer tensors, so in-place weight changes (EMA updates,
    ``load_state_dict``) are seen. ``conditions`` computes the class context and the ControlNet's
    mask embedding once per batch; ``forward`` takes them prepared.

    Args:
        net: the velocity net (left unchanged).
        onednn_linear: run every ``nn.Linear`` of the view as a ``OneDNNLinear``.
    """

    def __init__(self, net: VelocityNet, *, onednn_linear: bool = False) -> None:
        super().__init__()
        shared = {id(t): t for t in itertools.chain(net.parameters(), net.buffers())}
        view = copy.deepcopy(net, shared)
        if onednn_linear:
            for module in list(view.modules()):
                for name, child in list(module.named_children()):
                    if type(child) is nn.Linear:
                        setattr(module, name, OneDNNLinear(child))
        self.cond_embedding: nn.Module | None = None
        embedding = getattr(view.controlnet, "controlnet_cond_embedding", None)
        if isinstance(embedding, nn.Module):
            self.cond_embedding = embedding
            view.controlnet.controlnet_cond_embedding = nn.Identity()
        self.net = view

    def conditions(
        self,
        labels: torch.Tensor | None,
        masks: torch.Tensor | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(class context, ControlNet conditioning) for a batch, as ``VelocityNet.forward``."""
        net = self.net
        context = None
        if net.uses_class:
            if labels is None:
                raise ValueError("this net is class-conditioned: pass labels")
            context = net.context(labels.to(device), dtype)
        cond = None
        if net.controlnet is not None:
            if masks is None:
                raise ValueError("this net is mask-conditioned: pass masks")
            cond = masks.to(device).to(dtype)
            if self.cond_embedding is not None:
                cond = self.cond_embedding(cond)
        return context, cond

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None,
        cond: torch.Tensor | None,
    ) -> torch.Tensor:
        """Velocity at ``x``, time ``t`` for the prepared ``conditions``."""
        net = self.net
        steps = net.timesteps(t.to(x.device), x.shape[0]).to(x.device)
        if net.controlnet is None:
            return net.unet(x=x, timesteps=steps, context=context)
        down, mid = net.controlnet(x=x, timesteps=steps, controlnet_cond=cond, context=context)
        return net.unet(
            x=x,
            timesteps=steps,
            context=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )


# --------------------------------------------------------------------------------------------
# CPU runtime while sampling: keep the heap's freed memory
# --------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
HEAP_MMAP_THRESHOLD = 64 << 20
HEAP_TRIM_THRESHOLD = 256 << 20
_heap_state = {"retained": False}


@functools.lru_cache(maxsize=1)
def _glibc() -> Any:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def retain_freed_heap() -> bool:
    """Keep freed memory in the process heap (glibc only; process-wide, set once).

    Blocks up to ``HEAP_MMAP_THRESHOLD`` come from the heap and up to ``HEAP_TRIM_THRESHOLD`` of
    free memory stays at its top, until ``release_freed_heap``.

    Returns:
        Whether the setting is active.
    """
    if not _heap_state["retained"]:
        libc = _glibc()
        if libc is None:
            return False
        ok = libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD) == 1 and ok
        _heap_state["retained"] = ok
    return _heap_state["retained"]


def release_freed_heap() -> None:
    """Return the heap's free memory to the system (``malloc_trim``; glibc only)."""
    libc = _glibc()
    if libc is not None and _heap_state["retained"]:
        libc.malloc_trim(0)
