"""Old import path (kept for one release): see :mod:`ebmctl.attacks.gradients` and
:mod:`ebmctl.attacks.losses`."""

from ebmctl.attacks.gradients import (  # noqa: F401
    GRADIENT_MODES,
    auto_segment,
    eot_gradient,
    langevin_differentiable,
    purify_differentiable,
    smoothed_copy,
)
from ebmctl.attacks.losses import dlr_loss, margin_loss  # noqa: F401
