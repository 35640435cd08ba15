"""Image encoder: Hiera trunk + FPN neck with sine position encodings."""
import torch
import torch.nn.functional as F
from torch import nn

from samed2.model.building_blocks import PositionEmbeddingSine
from samed2.model.hiera import Hiera


class FpnNeck(nn.Module):
    """1x1 lateral convs to d_model, top-down nearest-neighbour fusion on the chosen levels."""

    def __init__(self, position_encoding: dict, d_model: int, backbone_channel_list, fpn_top_down_levels=None,
                 fpn_interp_model: str = "bilinear", fuse_type: str = "sum"):
        super().__init__()
        self.position_encoding = PositionEmbeddingSine(**position_encoding)
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in self.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(lateral)
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.top_down_levels = set(levels)
        self.interp_mode = fpn_interp_model
        self.average = fuse_type == "avg"

    def forward(self, xs):
        n = len(self.convs) - 1
        features, positions = [None] * len(xs), [None] * len(xs)
        previous = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and previous is not None:
                top_down = F.interpolate(previous.float(), scale_factor=2.0, mode=self.interp_mode,
                                         align_corners=None if self.interp_mode == "nearest" else False)
                previous = lateral + top_down
                if self.average:
                    previous = previous / 2
            else:
                previous = lateral
            features[i] = previous
            positions[i] = self.position_encoding(previous).to(previous.dtype)
        return features, positions


class ImageEncoder(nn.Module):
    def __init__(self, trunk: dict, neck: dict, scalp: int = 0):
        super().__init__()
        self.trunk = Hiera(**trunk)
        self.neck = FpnNeck(**neck)
        if self.trunk.channel_list != self.neck.backbone_channel_list:
            raise ValueError(f"trunk channels {self.trunk.channel_list} do not match the neck's "
                             f"{self.neck.backbone_channel_list}")
        self.scalp = scalp

    def forward(self, images: torch.Tensor):
        """(B, 3, S, S) -> FPN features and their position encodings, highest resolution first."""
        features, positions = self.neck(self.trunk(images))
        if self.scalp:
            features, positions = features[: -self.scalp], positions[: -self.scalp]
        return features, positions
