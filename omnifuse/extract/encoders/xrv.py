"""torchxrayvision's DenseNet-121 (``densenet121-res224-all``) in plain torch, without torchxrayvision or
torchvision (both import torchvision, which does not import beside the CPU torch).

The architecture is ``torchxrayvision.models.DenseNet`` with its defaults (growth 32, blocks (6, 12, 24, 16),
64 initial features, bottleneck 4, one input channel, 18 outputs) under the same module names
(``features.conv0``, ``features.denseblock1.denselayer1.norm1``, ``features.transition1.conv``,
``features.norm5``, ``classifier``), so the authors' weight file loads key for key. The embedding is
torchxrayvision's ``DenseNet.features2``: ReLU, global average pooling, [B, 1024].

Preprocessing, after the authors: ``xrv.utils.normalize(img, 255)`` maps 8-bit values to ``(2 v / 255 - 1) *
1024``, i.e. [-1024, 1024]; the README's example takes the mean over colour channels (``img.mean(2)``) for
one grey channel; ``xrv.datasets.XRayCenterCrop`` then ``XRayResizer(224)`` crop the long side to a square and
resize (skimage, antialiased). Here: the shared loader (``images.ImagePreprocess``: shorter side to 224,
antialiased bilinear, centre crop, grey copied to three channels) with mean 0.5 and std 1/2048 per channel,
which is exactly ``(2 v - 1) * 1024`` on v in [0, 1]; the model averages the three channels back into its one
input channel (equal to the grey image, and to the README's ``img.mean(2)`` for colour files).

Weights: the file of ``model_urls["densenet121-res224-all"]`` (a pickled module), read from torchxrayvision's
own folder (``~/.torchxrayvision/models_data/``, where ``xrv.models.get_weights`` keeps it) or downloaded
there from the GitHub release, through ``checkpoints.read_state_dict``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.extract.encoders.base import seeded
from omnifuse.extract.encoders.checkpoints import load_mapped, read_state_dict, strip_prefix
from omnifuse.extract.encoders.hub import url_file
from omnifuse.extract.encoders.image import ImageEncoder, ImageOptions, entry_image_encoder, register_image
from omnifuse.extract.encoders.registry import EncoderEntry
from omnifuse.extract.images import ImagePreprocess

XRV_WEIGHTS_URL = (
    "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
    "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
)
XRV_CACHE_DIR = Path("~/.torchxrayvision/models_data")
"""Where torchxrayvision keeps its weights (``xrv.utils.get_cache_dir``): a file there is used as it is."""
XRV_SIZE = 224
XRV_MEAN = (0.5, 0.5, 0.5)
XRV_STD = (1 / 2048, 1 / 2048, 1 / 2048)
XRV_PREP = ImagePreprocess(
    size=XRV_SIZE,
    mean=XRV_MEAN,
    std=XRV_STD,
    extra={
        "value_range": "[-1024, 1024]: (2 v - 1) * 1024 (torchxrayvision utils.normalize)",
        "grey_to_rgb": "copy; the model averages the 3 channels into its 1 grey input (xrv README img.mean(2))",
        "reference": "torchxrayvision utils.normalize, datasets.XRayCenterCrop, datasets.XRayResizer(224)",
    },
)


class DenseLayer(nn.Module):
    """torchxrayvision's ``_DenseLayer``: BN-ReLU-conv1x1 (4 k channels) -> BN-ReLU-conv3x3 (k channels),
    concatenated to its input: [B, C, H, W] -> [B, C + k, H, W]."""

    def __init__(self, in_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_features)
        self.conv1 = nn.Conv2d(in_features, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], 1)


def transition(in_features: int, out_features: int) -> nn.Sequential:
    """torchxrayvision's ``_Transition``: BN, ReLU, conv1x1, 2x2 average pooling."""
    return nn.Sequential(
        OrderedDict(
            norm=nn.BatchNorm2d(in_features),
            relu=nn.ReLU(),
            conv=nn.Conv2d(in_features, out_features, kernel_size=1, bias=False),
            pool=nn.AvgPool2d(kernel_size=2, stride=2),
        )
    )


class XRVDenseNet(nn.Module):
    """torchxrayvision ``models.DenseNet`` (DenseNet-BC): inputs [B, C, H, W] -> embedding [B, F] (``features2``).

    With one input channel (the default) a 3-channel input is averaged over channels first. ``classifier``
    (F -> ``num_classes``, the 18 pathologies) is kept so that the authors' file loads key for key; the
    embedding does not use it. DenseNet-121: F = 1024."""

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        in_channels: int = 1,
        num_classes: int = 18,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(num_init_features),
            relu0=nn.ReLU(),
            pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        n = num_init_features
        for i, num_layers in enumerate(block_config):
            block = nn.Sequential(
                OrderedDict(
                    (f"denselayer{j + 1}", DenseLayer(n + j * growth_rate, growth_rate, bn_size))
                    for j in range(num_layers)
                )
            )
            layers[f"denseblock{i + 1}"] = block
            n += num_layers * growth_rate
            if i != len(block_config) - 1:
                layers[f"transition{i + 1}"] = transition(n, n // 2)
                n //= 2
        layers["norm5"] = nn.BatchNorm2d(n)
        self.features = nn.Sequential(layers)
        self.classifier = nn.Linear(n, num_classes)
        self.num_features = n
        for m in self.modules():  # torchxrayvision's (torchvision's) initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values
        if self.in_channels == 1 and x.shape[1] != 1:
            x = x.mean(1, keepdim=True)
        out = F.relu(self.features(x))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


_OLD_DENSELAYER_KEY = r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"


def xrv_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchxrayvision DenseNet state dict -> ``XRVDenseNet``'s keys: the names are the same; files written by
    old torchvision DenseNets (``denselayer1.norm.1.weight``) are renamed as torchvision's loader does
    (``denselayer1.norm1.weight``), and a ``model.`` prefix on every key is removed."""
    import re

    pattern = re.compile(_OLD_DENSELAYER_KEY)
    out = {}
    for k, v in strip_prefix(state, "model.").items():
        m = pattern.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def load_xrv_weights(model: XRVDenseNet, path: str | Path) -> XRVDenseNet:
    """Load torchxrayvision's weight file at ``path`` into ``model`` (every key; ``op_threshs``, a buffer of
    newer files, is not the network's; ``num_batches_tracked`` may be absent from old files)."""
    state = xrv_state(read_state_dict(path))
    load_mapped(
        model,
        state,
        str(path),
        optional=lambda k: k.endswith("num_batches_tracked"),
        ignored=lambda k: k == "op_threshs",
    )
    return model


def xrv_weights_path(name: str) -> Path:
    """torchxrayvision's ``densenet121-res224-all`` file: in its own folder, or downloaded there."""
    dest = XRV_CACHE_DIR / XRV_WEIGHTS_URL.rsplit("/", 1)[1]
    return url_file(name, XRV_WEIGHTS_URL, dest, "image")


@register_image(
    "xrv-densenet121",
    source="torchxrayvision densenet121-res224-all",
    licence="Apache-2.0 (torchxrayvision, whose release holds the weights)",
    prep=XRV_PREP,
    output_shapes={"avg": (1024,)},
    aliases=("densenet121-res224-all",),
)
def xrv_densenet121(entry: EncoderEntry, opts: ImageOptions) -> ImageEncoder:
    """torchxrayvision DenseNet-121 trained on 8 chest X-ray datasets (one grey channel, [-1024, 1024], 224 px).

    Weights from ``~/.torchxrayvision/models_data/`` or its GitHub release; with ``pretrained=False`` the same
    architecture with seeded random weights."""
    return entry_image_encoder(
        entry,
        opts,
        XRV_PREP,
        lambda pooling: load_xrv_weights(XRVDenseNet(), xrv_weights_path(entry.name)),
        lambda pooling: XRVDenseNet(),
    )


def random_xrv_densenet(seed: int = 0) -> XRVDenseNet:
    """``XRVDenseNet()`` under ``torch.manual_seed(seed)``."""
    return seeded(seed, XRVDenseNet)
