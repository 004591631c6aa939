"""Core built-in plugin: EBM architectures, the attacks, the purifiers, the core profile
sections and the bundled profiles.

It uses the same hooks a third-party plugin would.
"""

from __future__ import annotations

from pathlib import Path

from ebmctl.attacks.apgd import APGD, APGDDLR
from ebmctl.attacks.base import AttackConfig
from ebmctl.attacks.bpda_eot import BPDAEOT
from ebmctl.attacks.full_eot import FullGradientEOT, SmoothedGradientEOT
from ebmctl.attacks.pgd import FGSM, PGD
from ebmctl.attacks.square import Square
from ebmctl.attacks.transfer import Transfer
from ebmctl.context import DataConfig, RunConfig, TaskConfig
from ebmctl.defense import DefenseConfig, LangevinPurifier
from ebmctl.dynamics.report import LyapunovConfig
from ebmctl.evaluate.quality import QualityConfig
from ebmctl.evaluate.resubmit import EvaluateConfig
from ebmctl.hookspecs import hookimpl
from ebmctl.importers.python_factory import python_factory
from ebmctl.importers.robustbench import robustbench_classifier
from ebmctl.importers.timm import timm_classifier
from ebmctl.importers.torchvision import torchvision_classifier
from ebmctl.nn.ebm_defense_wrn import ebm_defense_wrn
from ebmctl.nn.ebm import EbmConfig, lightweight_args, lightweight_ebm, lightweight_hat_args
from ebmctl.nn.hat import HatConfig, hat_ebm
from ebmctl.nn.fixer import FixerNetConfig, fixer_args, fixer_resnet
from ebmctl.nn.sngan import (
    encoder,
    sngan_ebm,
    sngan_ebm_args,
    sngan_generator,
    sngan_generator_args,
    sngan_hat_args,
)
from ebmctl.contracts import ModelSpec
from ebmctl.ood import OODConfig
from ebmctl.purifiers import BUILTIN_PURIFIERS
from ebmctl.sampling.langevin import LangevinConfig
from ebmctl.synthesis import SynthConfig
from ebmctl.training import RECIPES
from ebmctl.training.adversarial import AdversarialConfig
from ebmctl.training.autoencoder import AutoencoderConfig
from ebmctl.training.fixer import FixConfig
from ebmctl.training.task_model import ModelConfig
from ebmctl.training.trainer import OutputConfig, TrainConfig


@hookimpl
def ebmctl_register_models(register):
    register(ModelSpec("lightweight", "ebm", lightweight_ebm,
                       "thesis lightweight ConvNet EBM (<700K params at 32x32x3)",
                       {"ebm": lightweight_args, "hat": lightweight_hat_args}))
    register(ModelSpec("sngan-ebm", "ebm", sngan_ebm,
                       "SNGAN ResNet discriminator EBM, spectral norm optional (Miyato et al. "
                       "2018)", {"ebm": sngan_ebm_args, "hat": sngan_hat_args}))
    register(ModelSpec("sngan-generator", "generator", sngan_generator,
                       "SNGAN ResNet generator, latent -> image in [-1,1] (Miyato et al. 2018)",
                       {"generator": sngan_generator_args}))
    register(ModelSpec("fixer-resnet", "fixer", fixer_resnet,
                       "same-resolution residual image-to-image net (thesis Ch. 5 fixer)",
                       {"fixer": fixer_args}))
    register(ModelSpec("encoder", "encoder", encoder,
                       "conv encoder, latent on the sphere of radius sqrt(m) (thesis §6.5.2)"))
    register(ModelSpec("hat-ebm", "hat-ebm", hat_ebm,
                       "Hat EBM: hat network H over generator G, U(Y,Z) = H(G(Z)+Y) (thesis "
                       "Ch. 6)"))
    # the architectures imported artifacts rebuild (ebmctl import-model, ebmctl.importers)
    register(ModelSpec("torchvision", "classifier", torchvision_classifier,
                       "a torchvision architecture (ebmctl import-model torchvision:NAME)"))
    register(ModelSpec("timm", "classifier", timm_classifier,
                       "a timm architecture (ebmctl import-model timm:NAME; needs timm)"))
    register(ModelSpec("robustbench", "classifier", robustbench_classifier,
                       "a RobustBench model-zoo architecture (ebmctl import-model "
                       "robustbench:NAME; needs robustbench)"))
    register(ModelSpec("python-factory", "classifier", python_factory,
                       "the user's module.py:factory (runs that file's code on every load)"))
    register(ModelSpec("ebm-defense-wrn", "classifier", ebm_defense_wrn,
                       "the WideResNet of the thesis authors' code (point0bar1/ebm-defense)"))


@hookimpl
def ebmctl_register_attacks(register):
    for cls in (BPDAEOT, PGD, FGSM, FullGradientEOT, SmoothedGradientEOT, APGD, APGDDLR,
                Transfer, Square):
        register(cls)


@hookimpl
def ebmctl_register_purifiers(register):
    for cls in (LangevinPurifier, *BUILTIN_PURIFIERS):
        register(cls)


@hookimpl
def ebmctl_profile_schema(add):
    # each section is declared next to the code that reads it
    for section in (RunConfig, LangevinConfig, DefenseConfig, AttackConfig, EvaluateConfig,
                    FixerNetConfig, FixConfig, LyapunovConfig, SynthConfig, OODConfig, QualityConfig,
                    AutoencoderConfig, HatConfig, EbmConfig, DataConfig, TaskConfig,
                    ModelConfig, AdversarialConfig, OutputConfig):
        add(section)
    add(TrainConfig, choices={"recipe": tuple(RECIPES)})  # the one recipe table


@hookimpl
def ebmctl_profile_dirs():
    try:
        import ebmctl_profiles

        return [Path(ebmctl_profiles.__file__).parent]
    except ImportError:  # running from a source tree without installation
        return [Path(__file__).resolve().parent.parent / "profiles"]
