"""Input-transformation purifiers and the ``--purifier NAME[:key=value,...]`` parser.

The built-in purifiers besides the EBM's Langevin purification (:class:`ebmctl.defense.
LangevinPurifier`), each a :class:`~ebmctl.defense.Purifier` on [0,1] images [B,C,H,W]:

* ``jpeg`` (:class:`JPEG`): JPEG compression at ``quality`` (Dziugaite et al. 2016; Guo et al.
  2018, "Countering Adversarial Images using Input Transformations"), encoded and decoded by
  Pillow; deterministic, no backward pass;
* ``bit-depth`` (:class:`BitDepth`): colour-depth reduction to ``bits`` bits per channel (Xu,
  Evans & Qi 2018, "Feature Squeezing"); deterministic, no backward pass (its autograd
  gradient is zero almost everywhere: shattered gradients);
* ``median`` (:class:`MedianFilter`): a ``size`` × ``size`` median filter (Xu et al. 2018's
  spatial smoothing); deterministic, differentiable (autograd routes each output's gradient
  to the selected input pixel);
* ``gaussian-noise`` (:class:`GaussianNoise`): additive N(0, σ²) noise, clipped to [0,1]
  (a randomised defense; its EOT attack is Athalye, Carlini & Wagner 2018's); stochastic,
  differentiable.

Athalye, Carlini & Wagner (2018, "Obfuscated Gradients Give a False Sense of Security") break
such defenses with BPDA (identity backward pass) and EOT (averaging over the randomness); the
attacks here apply both to any purifier (:mod:`ebmctl.attacks.gradients`).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ebmctl.defense import Purifier, PurifierContext
from ebmctl.errors import ConfigError
from ebmctl.registry import Registry
from ebmctl.seeds import make_generator


class JPEG(Purifier):
    """JPEG compression and decompression of each image at ``quality`` (1..95, Pillow's
    scale; Guo et al. 2018 use 75) after rounding to 8-bit pixels. Gray images are coded as
    gray (mode L), 3-channel ones as RGB (4:2:0 chroma subsampling, Pillow's default).

    Raises:
        ConfigError: quality outside 1..95, or images with neither 1 nor 3 channels.
    """

    name = "jpeg"
    description = "JPEG compression at quality (Guo et al. 2018; Pillow codec); deterministic, BPDA"

    def __init__(self, quality: int = 75):
        if not 1 <= int(quality) <= 95:
            raise ConfigError(f"purifier 'jpeg': quality must be in 1..95, got {quality}")
        self.quality = int(quality)

    def settings(self) -> dict[str, Any]:
        return {"quality": self.quality}

    def purify(self, x01: torch.Tensor, key: tuple) -> torch.Tensor:
        from PIL import Image

        if x01.shape[1] not in (1, 3):
            raise ConfigError(
                f"purifier 'jpeg' codes 1- or 3-channel images, got {x01.shape[1]} channels"
            )
        pixels = (x01.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        out = []
        for img in pixels.permute(0, 2, 3, 1).numpy():
            pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            buf = io.BytesIO()
            pil.save(buf, format="JPEG", quality=self.quality)
            buf.seek(0)
            dec = np.asarray(Image.open(buf).convert(pil.mode))
            out.append(torch.from_numpy(dec.copy()).reshape(img.shape))
        y = torch.stack(out).permute(0, 3, 1, 2)
        return (y.to(x01.dtype) / 255).to(x01.device)


class BitDepth(Purifier):
    """Colour-depth reduction (Xu, Evans & Qi 2018): each [0,1] pixel rounded to the nearest
    of 2^bits levels, round(x·(2^b − 1)) / (2^b − 1). Xu et al. use 1 bit on MNIST and 5 on
    CIFAR-10.

    Raises:
        ConfigError: bits outside 1..8.
    """

    name = "bit-depth"
    description = "colour-depth reduction to bits (Xu et al. 2018 feature squeezing); BPDA"

    def __init__(self, bits: int = 5):
        if not 1 <= int(bits) <= 8:
            raise ConfigError(f"purifier 'bit-depth': bits must be in 1..8, got {bits}")
        self.bits = int(bits)

    def settings(self) -> dict[str, Any]:
        return {"bits": self.bits}

    def purify(self, x01: torch.Tensor, key: tuple) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(x01.clamp(0, 1) * levels) / levels


class MedianFilter(Purifier):
    """Median filter over ``size`` × ``size`` windows per channel (Xu et al. 2018's spatial
    smoothing; they use 2 × 2 on CIFAR-10), edges padded by reflection; an even window takes
    the lower of its two middle values (``torch.median``) and is anchored as scipy's
    ``median_filter`` anchors it (one more pixel before the centre than after). The output
    is one of the input pixels, so autograd passes each output's gradient to that pixel.

    Raises:
        ConfigError: size < 1, or a window larger than the image.
    """

    name = "median"
    description = "size x size median filter (Xu et al. 2018 spatial smoothing); differentiable"
    differentiable = True

    def __init__(self, size: int = 2):
        if int(size) < 1:
            raise ConfigError(f"purifier 'median': size must be >= 1, got {size}")
        self.size = int(size)

    def settings(self) -> dict[str, Any]:
        return {"size": self.size}

    def purify(self, x01: torch.Tensor, key: tuple) -> torch.Tensor:
        k = self.size
        if k == 1:
            return x01
        b, c, h, w = x01.shape
        if k > min(h, w):
            raise ConfigError(
                f"purifier 'median': a {k}x{k} window is larger than the {h}x{w} images"
            )
        before, after = k // 2, (k - 1) // 2
        padded = F.pad(x01, (before, after, before, after), mode="reflect")
        windows = F.unfold(padded, k).view(b, c, k * k, h * w)
        return windows.median(dim=2).values.view(b, c, h, w)


class GaussianNoise(Purifier):
    """Additive Gaussian noise x + σ·Z, Z ~ N(0, I) drawn from the EOT key, clipped to [0,1]
    (a randomised input transformation: stochastic, so the attacks average over replicates;
    the clip passes the gradient of the unclipped pixels).

    Raises:
        ConfigError: sigma < 0.
    """

    name = "gaussian-noise"
    description = "additive N(0, sigma^2) noise in [0,1] pixel units, clipped; stochastic, EOT"
    stochastic = True
    differentiable = True

    def __init__(self, sigma: float = 0.1):
        if float(sigma) < 0:
            raise ConfigError(f"purifier 'gaussian-noise': sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def settings(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def purify(self, x01: torch.Tensor, key: tuple) -> torch.Tensor:
        g = make_generator(x01.device, *key, "gaussian-noise")
        z = torch.randn(x01.shape, generator=g, device=x01.device, dtype=x01.dtype)
        return (x01 + self.sigma * z).clamp(0, 1)


#: the purifiers the core plugin registers besides ``ebm``
BUILTIN_PURIFIERS = (JPEG, BitDepth, MedianFilter, GaussianNoise)


def parse_purifier_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME[:key=value,...]`` → (name, {key: raw value}).

    Raises:
        ConfigError: an empty name, an item without ``=``, or a key given twice.
    """
    name, _, rest = str(spec).strip().partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"--purifier {spec!r}: give NAME[:key=value,...], e.g. bit-depth:bits=3")
    options: dict[str, str] = {}
    for item in (i.strip() for i in rest.split(",")) if rest.strip() else ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--purifier {spec!r}: {item!r} is not key=value")
        if key.strip() in options:
            raise ConfigError(f"--purifier {spec!r}: {key.strip()!r} given twice")
        options[key.strip()] = value.strip()
    return name, options


def _coerce(purifier: str, key: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            low = raw.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if kind is int:
            return int(raw)
        if kind is float:
            if "/" in raw:  # 8/255, as the CLI's radii
                num, den = raw.split("/", 1)
                return float(num) / float(den)
            return float(raw)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(
            f"purifier {purifier!r}: {key} must be {kind.__name__}, got {raw!r}"
        ) from None
    return raw


def build_purifier(
    spec: str,
    registry: Registry,
    context: PurifierContext | None = None,
    overrides: dict[str, Any] | None = None,
) -> Purifier:
    """The purifier ``spec`` (``NAME[:key=value,...]``) names, from the registered purifier
    classes; every key is used (typed by :meth:`Purifier.option_types`) or rejected.
    ``overrides`` adds typed settings a command's own flags gave (e.g. ``--langevin-steps``).

    Raises:
        ConfigError: an unknown name (with a suggestion), an unknown key (naming the
            purifier's settings), a value of the wrong type or out of range.
    """
    name, raw = parse_purifier_spec(spec)
    cls = registry.get(name)
    types = cls.option_types()
    unknown = sorted(set(raw) - set(types))
    if unknown:
        known = ", ".join(sorted(types)) or "none"
        raise ConfigError(
            f"purifier {name!r} has no setting {', '.join(map(repr, unknown))} "
            f"(its settings: {known})"
        )
    options = {k: _coerce(name, k, v, types[k]) for k, v in raw.items()}
    for k, v in (overrides or {}).items():
        if k in options:
            raise ConfigError(f"purifier {name!r}: {k} given twice (in the purifier and by a flag)")
        options[k] = v
    return cls.from_options(options, context or PurifierContext())
