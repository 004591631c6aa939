"""Sample-quality scores: Fréchet distances between feature statistics of samples and real images.

* FID: features of an Inception-v3 loaded from a local safetensors state dict (torchvision's
  layout, ``pool3`` 2048-d features at 299×299). Nothing is downloaded. Numbers match papers
  only with the TF-Inception weights that FID papers use; with other Inception weights they are
  an FID-like score, labelled as such by the caller.
* Proxy ("classifier FD"): the same distance on the penultimate features of the task's own
  classifier, so tests and the embedded digits can compute a quality score without any download.
  It is comparable only between runs that use the same classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ebmctl.config import setting
from ebmctl.units import adapt_images
from ebmctl.errors import ArtifactError, InputError

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class QualityConfig:
    """The profile section ``[quality]``: the feature network and reference set of the
    sample-quality score ``ebmctl synthesize`` reports (docs/algorithms.md#sample-quality)."""

    section: ClassVar[str] = "quality"

    fid_features: str = setting("", "local feature network for FID (safetensors Inception-v3 "
                                "state dict); empty = proxy score only")
    n_reference: int = setting(1000, "real images in the quality reference set", minimum=2)


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of features [N, D]."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise InputError("feature statistics need at least two feature vectors")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), the Fréchet distance of two Gaussians."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    # Tr((Σ1 Σ2)^½) = Σ √λ of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½: real and stable even for
    # the near-singular covariances of small sample sets (no complex matrix square root).
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(s1_half @ s2 @ s1_half)
    trace_covmean = float(np.sqrt(np.clip(lam, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_covmean)


def fd_between(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    return frechet_distance(*feature_stats(feat_a), *feature_stats(feat_b))


def extract(fn: FeatureFn, x01: torch.Tensor, device, batch: int = 200) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for part in torch.split(x01, batch):
            out.append(fn(part.to(device)).flatten(1).double().cpu())
    return torch.cat(out)


def classifier_features(model: nn.Module) -> FeatureFn:
    """Penultimate features of a classifier (the input of its last Linear layer); the logits
    when it has no Linear layer. ``model`` takes [0,1] images (a TaskModel)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]

    def fn(x01: torch.Tensor) -> torch.Tensor:
        if not linears:
            return model(x01)
        captured: list[torch.Tensor] = []
        handle = linears[-1].register_forward_pre_hook(lambda _m, inp: captured.append(inp[0]))
        try:
            model(x01)
        finally:
            handle.remove()
        return captured[-1]

    return fn


def inception_features(path: str | Path, device) -> FeatureFn:
    """Inception-v3 pool features from a local safetensors state dict (torchvision layout)."""
    from safetensors.torch import load_file
    from torchvision.models import inception_v3

    p = Path(path)
    if not p.is_file():
        raise InputError(f"FID feature network not found: {p}")
    try:
        state = load_file(str(p))
    except Exception as exc:
        raise ArtifactError(f"{p} is not a readable safetensors file: {exc}") from None
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{p} is not an Inception-v3 state dict: "
                            f"{str(exc).splitlines()[0]}") from None
    net.fc = nn.Identity()
    net = net.to(device).eval()
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def fn(x01: torch.Tensor) -> torch.Tensor:
        x = adapt_images(x01.clamp(0, 1), 0, 3)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return net((x - mean) / std)

    return fn


def quality_report(samples: dict[str, torch.Tensor], reference: torch.Tensor,
                   extractors: dict[str, FeatureFn], device,
                   floor: torch.Tensor | None = None) -> dict:
    """Fréchet distance of each sample set to ``reference`` under each feature extractor.
    ``floor`` (other real images) gives the real-vs-real distance at the same sample size."""
    report: dict = {}
    for name, fn in extractors.items():
        ref = extract(fn, reference, device)
        row = {k: round(fd_between(extract(fn, x, device), ref), 4) for k, x in samples.items()}
        if floor is not None:
            row["real_images_floor"] = round(fd_between(extract(fn, floor, device), ref), 4)
        report[name] = row
    return report
