"""The fixer's losses (thesis §5.2.1; docs/algorithms.md#fixer): the stage-1 MSE and the stage-2
perceptual (feature-reconstruction) loss on a frozen feature network, either VGG-16 loaded from
a local file or activations of the task model itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ebmctl.units import adapt_images
from ebmctl.errors import ArtifactError, ConfigError
from ebmctl.models import TaskModel
from ebmctl.registry import did_you_mean

# --- feature networks for the perceptual loss ------------------------------------------------

#: torchvision ``vgg16().features`` index of each ReLU output.
VGG16_LAYERS = {
    "relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13,
    "relu3_3": 15, "relu4_1": 18, "relu4_2": 20, "relu4_3": 22, "relu5_1": 25, "relu5_2": 27,
    "relu5_3": 29,
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CONVERT_HINT = ("convert torchvision's vgg16 .pth once with: python -c \"import torch, "
                 "safetensors.torch as st; st.save_file(torch.load('vgg16.pth', "
                 "weights_only=True), 'vgg16.safetensors')\"")


_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def vgg16_features(n_layers: int) -> nn.Sequential:
    """The first ``n_layers`` modules of torchvision's ``vgg16().features`` (same indices, so
    its state-dict keys load), built without the unused deeper layers or the classifier."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            # Not in place: captured activations must not be overwritten by later layers.
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            cin = v
        if len(layers) >= n_layers:
            break
    return nn.Sequential(*layers[:n_layers])


class VGGFeatures(nn.Module):
    """Frozen VGG-16 activations at named ReLU layers, loaded from a local safetensors file in
    torchvision's state-dict format (``features.N.weight`` ...). Never downloads."""

    def __init__(self, weights: str | Path, layers: list[str]):
        super().__init__()
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        unknown = [name for name in layers if name not in VGG16_LAYERS]
        if unknown or not layers:
            name = unknown[0] if unknown else ""
            raise ConfigError(f"unknown VGG-16 layer {name!r} in fix.vgg_layers"
                              f"{did_you_mean(name, list(VGG16_LAYERS))}")
        path = Path(weights) if weights else None
        if path is None:
            raise ConfigError("fix.feature_net = 'vgg16' needs a local VGG-16 weights file: set "
                              "fix.vgg_weights=PATH (torchvision's vgg16 state dict as "
                              ".safetensors; ebmctl never downloads), or use "
                              "fix.feature_net=classifier")
        if not path.is_file():
            raise ConfigError(f"VGG-16 weights file not found: {path} (fix.vgg_weights)")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError):
            raise ArtifactError(f"{path} is not a safetensors file; {_CONVERT_HINT}") from None
        self.index = [VGG16_LAYERS[name] for name in layers]
        features = vgg16_features(max(self.index) + 1)
        own = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        expected = features.state_dict()
        missing = sorted(set(expected) - set(own))
        if missing:
            raise ArtifactError(f"{path} lacks VGG-16 tensors {['features.' + m for m in missing[:3]]}"
                                " (expected torchvision's vgg16 state dict)")
        for k, v in expected.items():
            if tuple(own[k].shape) != tuple(v.shape):
                raise ArtifactError(f"{path}: tensor features.{k} has shape {tuple(own[k].shape)}, "
                                    f"VGG-16 expects {tuple(v.shape)}")
        features.load_state_dict({k: own[k].float() for k in expected})
        self.features = features.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x01: torch.Tensor) -> list[torch.Tensor]:
        h = (adapt_images(x01, 0, 3) - self.mean) / self.std
        wanted, out = set(self.index), []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in wanted:
                out.append(h)
        return out


_ACTIVATION_TYPES = (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.ELU, nn.Softplus)


class ClassifierFeatures(nn.Module):
    """Activations of named modules of the task model (download-free perceptual loss).

    ``layers`` are module names of the task network (``features.3``) or ``output`` for its
    raw outputs; empty means every activation module (or the output if it has none)."""

    def __init__(self, model: TaskModel, layers: list[str]):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        modules = dict(model.net.named_modules())
        if not layers:
            layers = [n for n, m in modules.items() if isinstance(m, _ACTIVATION_TYPES)] or ["output"]
        for name in layers:
            if name != "output" and (name not in modules or name == ""):
                choices = [n for n in modules if n] + ["output"]
                raise ConfigError(f"task model has no layer {name!r} (fix.classifier_layers)"
                                  f"{did_you_mean(name, choices)}")
        self.layers = list(layers)
        self._captured: list[torch.Tensor] = []
        for name in self.layers:
            if name != "output":
                modules[name].register_forward_hook(
                    lambda _m, _i, out: self._captured.append(out))

    def forward(self, x01: torch.Tensor) -> list[torch.Tensor]:
        self._captured = []
        out = self.model(x01)
        feats = list(self._captured)
        self._captured = []
        return feats + ([out] if "output" in self.layers else [])


def build_feature_net(feature_net: str, vgg_weights: str | Path | None,
                      vgg_layers: Sequence[str], classifier_layers: Sequence[str],
                      task_model: TaskModel | None, device) -> nn.Module:
    """The frozen feature network of the perceptual loss: ``feature_net`` is ``vgg16`` (VGG-16
    from the local file ``vgg_weights``, features at ``vgg_layers``) or ``classifier`` (the
    task model's own activations at ``classifier_layers``). The arguments are the values of
    the ``[fix]`` section's keys of the same names; plain values, so this module does not
    depend on the trainer that declares the section.

    Raises:
        ConfigError: ``classifier`` without a task model, or a bad VGG-16 setting.
    """
    if feature_net == "vgg16":
        return VGGFeatures(vgg_weights, list(vgg_layers)).to(device)
    if task_model is None:
        raise ConfigError("fix.feature_net = 'classifier' needs the task model: pass --model FILE")
    return ClassifierFeatures(task_model, list(classifier_layers)).to(device)


# --- losses -----------------------------------------------------------------------------------

def mse_loss(fixed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Stage 1: mean squared error in [0,1] units."""
    return F.mse_loss(fixed, target)


def perceptual_loss(features: nn.Module, fixed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Stage 2 (thesis §5.2.1): (1/(C_j H_j W_j))·‖φ_j(G(x̂)) − φ_j(x)‖², batch- and
    layer-averaged."""
    with torch.no_grad():
        want = features(target)
    got = features(fixed)
    return sum(F.mse_loss(g, w) for g, w in zip(got, want)) / len(got)
