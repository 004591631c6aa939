"""The training entry points called from a resolved profile, as the commands call them: each
builds the typed sections its recipe reads (``from_config``) and the profile's ``RunRecord``
once, then runs the recipe. Tests that describe a run by a profile (``resolve(...)`` plus
``--set`` items) train through these; the recipes themselves never see the ``Config``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ebmctl.config import Config
from ebmctl.contracts import DatasetBundle, Task


def train_ebm(cfg: Config, bundle: DatasetBundle, out: Path, device: torch.device,
              **kw) -> Path:
    """Convergent EBM training (``ebmctl train ebm`` with ``train.recipe = convergent``)."""
    import ebmctl.training.convergent as tr
    from ebmctl.training.trainer import EnergyTrainingSections

    return tr.train_ebm(EnergyTrainingSections.from_config(cfg, bundle), cfg.record(), bundle,
                        out, device, **kw)


def train_midrun(cfg: Config, bundle: DatasetBundle, out: Path, device: torch.device,
                 **kw) -> Path:
    """Mid-run EBM training (``ebmctl train ebm`` with ``train.recipe = midrun``)."""
    import ebmctl.training.midrun as tr
    from ebmctl.training.trainer import EnergyTrainingSections

    return tr.train_midrun(EnergyTrainingSections.from_config(cfg, bundle), cfg.record(),
                           bundle, out, device, **kw)


def train_hat(cfg: Config, bundle: DatasetBundle, out: Path, device: torch.device,
              **kw) -> Path:
    """Hat EBM training (``ebmctl train hat``)."""
    import ebmctl.training.hat as tr
    from ebmctl.training.trainer import EnergyTrainingSections

    return tr.train_hat(EnergyTrainingSections.from_config(cfg),
                        tr.HatSections.from_config(cfg, bundle), cfg.record(), bundle, out,
                        device, **kw)


def build_hat(cfg: Config, bundle: DatasetBundle, device):
    """The fresh Hat EBM of a run with profile ``cfg`` and its ``arch_args``."""
    import ebmctl.training.hat as tr
    from ebmctl.context import RunConfig

    return tr.build_hat(tr.HatSections.from_config(cfg, bundle), cfg.section(RunConfig).seed,
                        bundle, device)


def train_task_model(cfg: Config, bundle: DatasetBundle, task: Task, out: Path,
                     device: torch.device, **kw) -> Path | None:
    """Task-model training (``ebmctl train model``)."""
    import ebmctl.training.task_model as tr

    return tr.train_task_model(tr.TaskTrainingSections.from_config(cfg, bundle, task),
                               cfg.record(), bundle, task, out, device, **kw)


def train_fixer(cfg: Config, run, out: Path, device: torch.device, **kw) -> Path:
    """Fixer training (``ebmctl fix train``) for the frozen networks and data of ``run``."""
    import ebmctl.training.fixer as tr

    return tr.train_fixer(tr.FixerSections.from_config(cfg, run.bundle), cfg.record(), run, out,
                          device, **kw)


def train_autoencoder(cfg: Config, bundle: DatasetBundle, out: Path,
                      device: torch.device) -> Path:
    """Autoencoder training (``ebmctl train autoencoder``)."""
    import ebmctl.training.autoencoder as tr

    return tr.train_autoencoder(tr.AutoencoderSections.from_config(cfg), cfg.record(), bundle,
                                out, device)


def adversarial_settings(cfg: Config):
    """The resolved, checked ``[adversarial]`` section of ``cfg``."""
    from ebmctl.training.adversarial import AdversarialConfig

    return AdversarialConfig.from_config(cfg)
