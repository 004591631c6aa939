"""Dynamics of the Langevin sampler (docs/algorithms.md#sampler-dynamics), thesis §2.10.

- :mod:`ebmctl.dynamics.benettin`: the maximal Lyapunov exponent of the Langevin map
  (finite-separation Benettin) over an η grid; pure.
- :mod:`ebmctl.dynamics.forgetting`: forgetting curves of clean and adversarial starts and the
  energy gap; pure.
- :mod:`ebmctl.dynamics.report`: both as reports for an EBM artifact and a profile, and their
  figures (what ``ebmctl lyapunov`` writes).
"""
