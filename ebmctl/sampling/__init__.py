"""Samplers of the energy models, one module per model family.

- :mod:`ebmctl.sampling.langevin`: the plain EBM's Langevin update (the hot loop of every
  command; docs/algorithms.md#langevin-update).
- :mod:`ebmctl.sampling.hat`: the Hat EBM's alternating residual/latent Langevin
  (docs/algorithms.md#hat-ebm-sampling).

Both take networks and tensors, not artifacts; :mod:`ebmctl.models` wraps loaded artifacts
around them.
"""
