"""Training: the energy-training loop and its recipes, the task models, the fixer, the
autoencoder.

:data:`RECIPES` is the one dispatch table of the EBM training recipes: its names are the
choices of ``train.recipe``, and ``ebmctl train ebm`` runs the class it names.
"""

from __future__ import annotations

from ebmctl.training.convergent import Convergent
from ebmctl.training.midrun import MidRun

#: ``train.recipe`` -> the :class:`ebmctl.training.trainer.EnergyRecipe` it runs
RECIPES = {"convergent": Convergent, "midrun": MidRun}
