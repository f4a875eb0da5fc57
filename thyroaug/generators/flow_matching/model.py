"""Flow-matching model (paper sections 2.2 / 3.2.3, MOTFM): the velocity net, the path, the loss.

The net is MONAI's ``DiffusionModelUNet`` with a ``ControlNet`` branch for the mask, as MOTFM
[yazdani2026flow] builds it; the path is the conditional OT path of Lipman et al. (2023), Eq. (22)
with sigma_min = 0, trained with their Eq. (23). Design notes: docs/generators.md, "Model, path
and loss".
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from thyroaug.contract import CLASSES
from thyroaug.generators.flow_matching.config import FMConfig

log = logging.getLogger(__name__)

FORMAT = "thyroaug-fm/1"
"""Format tag of checkpoints and generator folders."""


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class VelocityNet(nn.Module):
    """v(x_t, t | class, mask): MONAI DiffusionModelUNet (+ ControlNet for the mask).

    The class enters as a one-hot context ``[B, 1, 4]`` through cross-attention, the mask through
    a ControlNet initialised from the UNet (a no-op at first: zero convolutions).

    Args:
        config: network settings (``FMConfig``); ``config.conditioning`` picks the branches.
    """

    def __init__(self, config: FMConfig) -> None:
        super().__init__()
        # monai takes seconds to import: it loads when a net is built, not with
        # `train-fm --help` (whose trainer imports this module)
        from monai.networks.nets import ControlNet, DiffusionModelUNet

        self.config = config
        kwargs = config.unet_kwargs()
        self.unet = DiffusionModelUNet(out_channels=1, **kwargs)
        self.controlnet: nn.Module | None = None
        if config.uses_mask:
            self.controlnet = ControlNet(
                conditioning_embedding_in_channels=1,
                conditioning_embedding_num_channels=config.conditioning_embedding_channels,
                **kwargs,
            )
            # ControlNet paper / MOTFM: start the branch as a copy of the UNet's encoder; its
            # zero convolutions (not in the UNet) stay zero, so the branch starts as a no-op.
            self.controlnet.load_state_dict(self.unet.state_dict(), strict=False)

    @property
    def uses_class(self) -> bool:
        """Whether labels are required."""
        return self.config.uses_class

    @property
    def uses_mask(self) -> bool:
        """Whether masks are required."""
        return self.config.uses_mask

    def timesteps(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """Continuous t in [0, 1] (scalar or [B]) -> float timesteps in [0, max_timestep - 1]."""
        t = torch.as_tensor(t, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(batch)
        return t.reshape(batch) * (self.config.max_timestep - 1)

    def context(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """One-hot class context ``[B, 1, len(CLASSES)]``."""
        return F.one_hot(labels.long(), len(CLASSES)).to(dtype)[:, None, :]

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity at ``x`` ``[B, 1, S, S]`` and time ``t`` (scalar or ``[B]`` in [0, 1]).

        Args:
            x: state in the net's [-1, 1] space.
            t: time in [0, 1].
            labels: ``[B]`` class indices (required for class conditioning, else ignored).
            masks: ``[B, 1, S, S]`` float 0/1 masks (required for mask conditioning, else ignored).
        """
        b = x.shape[0]
        steps = self.timesteps(t.to(x.device), b).to(x.device)
        context = None
        if self.uses_class:
            if labels is None:
                raise ValueError("this net is class-conditioned: pass labels")
            context = self.context(labels.to(x.device), x.dtype)
        if self.controlnet is None:
            return self.unet(x=x, timesteps=steps, context=context)
        if masks is None:
            raise ValueError("this net is mask-conditioned: pass masks")
        down, mid = self.controlnet(
            x=x, timesteps=steps, controlnet_cond=masks.to(x.dtype), context=context
        )
        return self.unet(
            x=x,
            timesteps=steps,
            context=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )


def count_parameters(net: VelocityNet) -> dict[str, int]:
    """Parameter counts of the UNet and the ControlNet branch."""
    count = {"unet": sum(p.numel() for p in net.unet.parameters())}
    count["controlnet"] = (
        sum(p.numel() for p in net.controlnet.parameters()) if net.controlnet is not None else 0
    )
    return count


# --------------------------------------------------------------------------------------------
# Path and loss
# --------------------------------------------------------------------------------------------
def cond_ot_path(
    x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional OT path (Lipman et al. 2023, Eq. (22), sigma_min = 0): (x_t, u_t).

    x_t = (1 - t) x0 + t x1 and u_t = x1 - x0.
    """
    tt = t.reshape(-1, *([1] * (x1.ndim - 1))).to(x1.dtype)
    return (1 - tt) * x0 + tt * x1, x1 - x0


def flow_matching_loss(
    net: nn.Module,
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Conditional flow-matching loss (Lipman et al. 2023, Eq. (23)): MSE to u_t = x1 - x0."""
    x_t, u_t = cond_ot_path(x0, x1, t)
    v = net(x_t, t, labels, masks)
    return F.mse_loss(v.float(), u_t.float())
