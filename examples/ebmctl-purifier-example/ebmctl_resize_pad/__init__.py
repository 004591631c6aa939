"""A third-party purifier for ebmctl: random resizing and padding (Xie, Wang, Zhang, Ren &
Yuille 2018, "Mitigating Adversarial Effects Through Randomization"), one of the randomised
input transformations Athalye, Carlini & Wagner (2018) broke with EOT.

Each image [C,H,W] in [0,1] is resized to a random s × s (H ≤ s ≤ H + max_pad, nearest
neighbour), placed at a random offset on a zero canvas of (H + max_pad) × (W + max_pad) and
resized back to H × W (bilinear), so the classifier keeps its input size. All randomness comes
from the generator of the key ebmctl hands the purifier, so EOT replicates differ and a
repeated key repeats the output. Every step is differentiable almost everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ebmctl.api import ConfigError, Purifier, hookimpl, make_generator


class RandomResizePad(Purifier):
    name = "random-resize-pad"
    description = "random resize and pad (Xie et al. 2018), resized back; stochastic"
    stochastic = True
    differentiable = True

    def __init__(self, max_pad: int = 4):
        if int(max_pad) < 1:
            raise ConfigError(f"purifier 'random-resize-pad': max_pad must be >= 1, got {max_pad}")
        self.max_pad = int(max_pad)

    def settings(self) -> dict:
        return {"max_pad": self.max_pad}

    def purify(self, x01: torch.Tensor, key: tuple) -> torch.Tensor:
        b, _, h, w = x01.shape
        g = make_generator(torch.device("cpu"), *key, "resize-pad")
        out = []
        for i in range(b):  # each image its own size and offset
            s = int(torch.randint(0, self.max_pad + 1, (1,), generator=g))
            left, top = (int(v) for v in torch.randint(0, self.max_pad - s + 1, (2,), generator=g))
            small = F.interpolate(x01[i : i + 1], size=(h + s, w + s), mode="nearest")
            canvas = F.pad(small, (left, self.max_pad - s - left, top, self.max_pad - s - top))
            out.append(F.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False))
        return torch.cat(out).clamp(0, 1)


@hookimpl
def ebmctl_register_purifiers(register):
    register(RandomResizePad)
