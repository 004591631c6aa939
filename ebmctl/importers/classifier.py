"""What the classifier adapters (torchvision, timm, python factory, RobustBench) share: the
wrapper that normalises [0,1] inputs, and the classifier artifact an import writes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ebmctl.errors import ConfigError
from ebmctl.importers.request import ImportRequest
from ebmctl.importers.state_dict import infer_num_classes, load_state_dict_file, load_strict


class Normalized(nn.Module):
    """``net((x − mean) / std)`` for [0,1] images x [B,C,H,W]; mean/std per channel (or one
    value), stored in the artifact's ``arch_args``, not as tensors."""

    def __init__(self, net: nn.Module, mean: list[float] | None = None,
                 std: list[float] | None = None):
        super().__init__()
        self.net = net
        mean, std = list(mean or [0.0]), list(std or [1.0])
        if any(s <= 0 for s in std):
            raise ConfigError(f"--std values must be > 0, got {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.identity = all(m == 0 for m in mean) and all(s == 1 for s in std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x if self.identity else (x - self.mean) / self.std)


def import_classifier(request: ImportRequest, out: str | Path, arch: str,
                      build: Callable[[int], tuple[dict, Normalized]]) -> Path:
    """Load ``request.weights`` (if any) into the :class:`Normalized` net that ``build`` makes
    for a number of classes, and save it at ``out`` as a ``classifier`` artifact of the
    registered architecture ``arch``. ``build(num_classes)`` returns the architecture's
    ``arch_args`` (mean and std are added here) and the net.

    The number of classes is ``request.num_classes``, else the rows of the weights' last 2-d
    tensor, else 1000.

    Raises:
        ConfigError: mean and std of different lengths. InputError / ArtifactError: bad weights.
    """
    from ebmctl.artifacts import model_tensors, save_artifact

    weights, mean, std = request.weights, request.mean, request.std
    state = load_state_dict_file(weights) if weights is not None else None
    provenance = request.provenance()
    num_classes = request.num_classes
    if num_classes is None:
        num_classes = infer_num_classes(state) or 1000
    norm = {"mean": mean, "std": std}
    if mean is not None and std is not None and len(mean) != len(std):
        raise ConfigError("--mean and --std need the same number of values")
    args, net = build(num_classes)
    args.update(mean=mean, std=std)
    if state is not None:
        load_strict(net.net, state, f"{request.source} with {weights}")
    net.eval()
    data = {"range": "[0,1]", "image_size": int(request.image_size),
            "channels": int(request.channels), "normalisation": norm}
    return save_artifact(out, model_tensors(net), kind="classifier", arch=arch, arch_args=args,
                         task=request.task, data=data, extra={"imported": provenance,
                                                              "normalisation": norm})
