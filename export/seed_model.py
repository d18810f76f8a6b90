"""The published seed networks (Sytwu, Rangel DaCosta & Scott) as faithful reference
re-implementations (:class:`SeedUNet`, :class:`SeedResidualBlock`), the allowlist of the
restricted unpickler (:data:`SEED_ALLOWLIST`), loading a checkpoint, the copy into
``resunet-seed`` and the parity check. Used by :mod:`fringelive.export.seed_import`."""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fringelive.engine.models import build_model
from fringelive.export.safe_unpickle import UnpicklingRefused, make_pickle_module
from fringelive.export.seed_metadata import SeedImportError

__all__ = ["SeedResidualBlock", "SeedUNet", "SEED_ALLOWLIST", "load_seed_checkpoint", "to_resunet", "check_parity"]


# --- reference re-implementation of the published classes --------------------------------

class SeedResidualBlock(nn.Module):
    """The published ``ResidualBlock`` (forward as published; attributes come from the pickle).

    ``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + conv_add(x))``; x (N, C_in, H, W) → (N, C_out, H, W).
    """

    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    relu1: nn.ReLU
    conv2: nn.Conv2d
    bn2: nn.BatchNorm2d
    relu2: nn.ReLU
    conv_add: nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.conv_add(x)
        return self.relu2(out)


class SeedUNet(nn.Module):
    """The published ``UNet`` (forward as published; attributes come from the pickle).

    x (N, 1, H, W), H and W multiples of 16 → logits (N, 2, H, W).
    """

    downs: nn.ModuleList
    pools: nn.ModuleList
    bottleneck: nn.Module
    upsamples: nn.ModuleList
    ups: nn.ModuleList
    final_conv: nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i in range(len(self.downs)):
            x = self.downs[i](x)
            skips.append(x)
            x = self.pools[i](x)
        x = self.bottleneck(x)
        skips = skips[::-1]
        for idx in range(len(self.ups)):
            x = self.upsamples[idx](x)
            x = self.ups[idx](torch.cat((skips[idx], x), 1))
        return self.final_conv(x)


#: Every global the published pickles may name, mapped to what it loads as.
SEED_ALLOWLIST: dict[str, Any] = {
    "__main__.UNet": SeedUNet,
    "__main__.ResidualBlock": SeedResidualBlock,
    "torch.nn.modules.conv.Conv2d": nn.Conv2d,
    "torch.nn.modules.batchnorm.BatchNorm2d": nn.BatchNorm2d,
    "torch.nn.modules.activation.ReLU": nn.ReLU,
    "torch.nn.modules.pooling.MaxPool2d": nn.MaxPool2d,
    "torch.nn.modules.upsampling.Upsample": nn.Upsample,
    "torch.nn.modules.container.ModuleList": nn.ModuleList,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    # torch.load resolves storage type names itself before find_class; listed for completeness.
    "torch.FloatStorage": torch.FloatStorage,
    "torch.LongStorage": torch.LongStorage,
}


def load_seed_checkpoint(path: str | os.PathLike[str]) -> SeedUNet:
    """Load a published checkpoint as a :class:`SeedUNet` on CPU in eval mode, through the
    restricted unpickler. Raises :class:`UnpicklingRefused` (naming the global) for any
    global outside :data:`SEED_ALLOWLIST`, :class:`SeedImportError` for other problems."""
    p = Path(path)
    if not p.is_file():
        raise SeedImportError(f"checkpoint {p}: no such file")
    pickle_module = make_pickle_module(SEED_ALLOWLIST, source=p.name)
    try:
        obj = torch.load(p, map_location="cpu", pickle_module=pickle_module, weights_only=False)
    except UnpicklingRefused:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt archives raise many types
        raise SeedImportError(f"checkpoint {p}: cannot be read as a torch archive: {e}") from None
    if not isinstance(obj, SeedUNet):
        raise SeedImportError(f"checkpoint {p}: holds a {type(obj).__name__}, expected the published UNet module")
    return obj.eval()


def to_resunet(seed: nn.Module, source: str = "checkpoint") -> nn.Module:
    """Copy a published network's weights into ``build_model("resunet-seed")`` (eval mode)."""

    model = build_model("resunet-seed")
    try:
        model.load_state_dict(seed.state_dict(), strict=True)
    except RuntimeError as e:
        raise SeedImportError(f"{source}: weights do not fit resunet-seed: {e}") from None
    return model.eval()


@torch.no_grad()
def check_parity(reference: nn.Module, model: nn.Module, size: int = 256, seed: int = 0) -> float:
    """Max abs logit difference of two networks in eval mode on one random ``(1, 1, size, size)``
    standard-normal input."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, size, size, generator=g)
    reference.eval()
    model.eval()
    return float((reference(x) - model(x)).abs().max())
