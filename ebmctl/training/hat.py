"""Hat EBM training (thesis Alg. 5): tandem updates of the hat network H and the generator G
with a historical bank of (X, Z) pairs, or hat-only training around a frozen pretrained
generator (refinement, thesis §6.5.1 / retrofit, §6.5.2). Algorithms:
docs/algorithms.md#hat-ebm-training.

Per update t (randomness derived from (seed, t), so a resumed run reproduces an uninterrupted
one):
  1. X⁺ = data batch + data noise; chains from Z ~ N(0,I), Y = 0, K Langevin steps (Y only in
     conditional mode, Y and Z in joint mode); X⁻ = G(Z) + Y.
  2. θ ← Adam step on mean H(X⁺) − mean H(X⁻) (Eq. 6.8; optional gradient-norm clip).
  3. If G is trained: draw B distinct bank pairs, φ ← Adam step on
     scale · MSE(G(Z_bank), X_bank) (Eq. 6.11/6.12), then overwrite those pairs with the newest
     (X⁻, Z). Learning from history instead of the current samples keeps G diverse (§6.4.5).

What differs from the plain-EBM recipes lives in :class:`HatRecipe`: chains start afresh from
Z ~ N(0, I), Y = 0 (no persistent image bank), both learning rates drop tenfold at
``hat.lr_decay_step``, the hat's gradient may be clipped, and each update ends with the
generator step of 3. The loop, resume, checkpoints and numerical stops are
:class:`ebmctl.training.trainer.EnergyTrainer`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ebmctl.architectures import ModelChoice, choose_model, instantiate
from ebmctl.artifacts import load_model, optimizer_from_tensors, optimizer_to_tensors
from ebmctl.config import Config, RunRecord
from ebmctl.console import info
from ebmctl.contracts import DatasetBundle
from ebmctl.errors import ArtifactError, ConfigError
from ebmctl.nn.hat import HatConfig, HatEBM
from ebmctl.sampling.hat import HatSettings, hat_langevin, initial_state
from ebmctl.sampling.langevin import LangevinConfig
from ebmctl.seeds import make_generator
from ebmctl.training.checkpoint import restore_optimizer
from ebmctl.training.trainer import EnergyRecipe, EnergyTrainer, EnergyTrainingSections


@dataclass(frozen=True)
class HatSections:
    """What the Hat EBM recipe reads besides :class:`EnergyTrainingSections`: its ``[hat]``
    section, the hat network H to build (``hat.arch``) and the generator G to build
    (``hat.generator_arch``; None when G is loaded from the ``hat.generator`` artifact)."""

    hat: HatConfig
    hat_model: ModelChoice
    generator_model: ModelChoice | None

    @classmethod
    def from_config(cls, cfg: Config, bundle: DatasetBundle) -> "HatSections":
        """The ``[hat]`` section of ``cfg`` and the models it asks for at ``bundle``'s channels
        and size (each architecture reads its own keys). Raises ConfigError naming the key of
        an architecture that cannot play its role."""
        hat = cfg.section(HatConfig)
        return cls(hat, choose_model("hat", cfg, bundle),
                   None if hat.generator else choose_model("generator", cfg, bundle))


def build_hat(hat: HatSections, seed: int, bundle: DatasetBundle,
              device) -> tuple[HatEBM, dict]:
    """Fresh H; G fresh (synthesis) or loaded from ``hat.generator`` (refinement/retrofit);
    initial weights keyed by (``seed``, "hat-init"). Returns the network on ``device`` and its
    ``arch_args``. Raises ConfigError when G's images do not match the data's shape."""
    generator = hat.hat.generator
    if generator:
        gen_net, art = load_model(generator, ("generator",))
        gen_arch, gen_args = art.arch, art.arch_args
    else:
        gen_net = None
        gen_arch, gen_args = hat.generator_model.arch, hat.generator_model.args
    arch_args = {"hat_arch": hat.hat_model.arch, "hat_args": hat.hat_model.args,
                 "generator_arch": gen_arch, "generator_args": gen_args}
    net = instantiate("hat-ebm", arch_args, (seed, "hat-init"), "the Hat EBM")
    if gen_net is not None:
        net.generator.load_state_dict(gen_net.state_dict())
    with torch.no_grad():
        out = net.generate(torch.zeros((1, *net.latent_shape)))
    if tuple(out.shape[1:]) != (bundle.channels, bundle.image_size, bundle.image_size):
        raise ConfigError(f"the generator makes {tuple(out.shape[1:])} images but the data are "
                          f"{(bundle.channels, bundle.image_size, bundle.image_size)}")
    return net.to(device), arch_args


def settings_from(hat: HatConfig, langevin: LangevinConfig) -> HatSettings:
    """The Hat EBM's sampler settings: ε_Y, ε_Z, mode and residual prior of ``hat``, the
    temperature of ``langevin``."""
    return HatSettings(hat.eps_y, hat.eps_z, langevin.temperature, hat.mode, hat.residual,
                       hat.residual_prior)


def generator_update(net: HatEBM, opt_g, zbank: torch.Tensor, xbank: torch.Tensor,
                     idx: torch.Tensor, scale: float) -> float:
    """One generator step towards historical bank targets (Eq. 6.12, one optimiser step)."""
    net.generator.train()
    loss = scale * F.mse_loss(net.generate(zbank[idx]), xbank[idx])
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    net.generator.eval()
    return loss.item()


def _lr(decay: int, base: float, step: int) -> float:
    """``base``, divided by 10 from update ``decay`` (``hat.lr_decay_step``; 0 = never) on."""
    return base * (0.1 if decay and step >= decay else 1.0)


class HatRecipe(EnergyRecipe):
    """Alg. 5: the hat network's update on fresh (Y, Z) chains and, unless G is frozen
    (``hat.train_generator = false``), a generator step towards the historical (X, Z) bank."""

    target, kind, label, title = "hat-ebm", "hat-ebm", "train hat ebm", "Hat EBM training"
    energy_symbol, noun, health_check = "H", "Hat EBM", False

    def __init__(self, sections: EnergyTrainingSections, hat: HatSections, record: RunRecord,
                 bundle: DatasetBundle, device):
        super().__init__(sections, record, bundle, device)
        self.hat_sections, self.hat = hat, hat.hat

    @property
    def trained(self) -> torch.nn.Module:
        return self.net.hat

    def guard_files(self) -> dict:
        return {"hat.generator": self.hat.generator}

    def setup(self) -> None:
        hat, train = self.hat, self.train
        self.settings = settings_from(hat, self.langevin)
        self.net, self.arch_args = build_hat(self.hat_sections, self.seed, self.bundle, self.device)
        self.arch = "hat-ebm"
        self.train_gen = hat.train_generator
        if self.train_gen and hat.generator and hat.mode == "joint":
            info("note: training a pretrained generator in joint mode; refinement (thesis "
                 "§6.5.1) keeps it frozen (hat.train_generator = false)")
        self.batch = train.batch_size
        self.load_data()
        if len(self.data) == 0:
            raise ConfigError("the training split is empty")
        betas = (train.adam_beta1, train.adam_beta2)
        self.opt_h = torch.optim.Adam(self.net.hat.parameters(), lr=train.lr_adam,
                                      betas=betas)
        self.opt_g = torch.optim.Adam(self.net.generator.parameters(),
                                      lr=hat.lr_generator, betas=betas)
        self.bank_size = hat.bank_size
        if self.train_gen and self.bank_size < self.batch:
            raise ConfigError(f"hat.bank_size ({self.bank_size}) must be at least "
                              f"train.batch_size ({self.batch})")
        if self.train_gen:
            gen0 = make_generator(self.device, self.seed, "hat-bank-init")
            self.zbank = torch.randn((self.bank_size, *self.net.latent_shape), generator=gen0,
                                     device=self.device)
            with torch.no_grad():  # image bank from the initial generator (Alg. 5)
                self.xbank = torch.cat([self.net.generate(z) for z in torch.split(self.zbank, 512)])

    def restore(self, ck: dict) -> None:
        restore_optimizer(self.opt_h, ck)
        gen_t = {k[len("genopt."):]: v for k, v in ck["tensors"].items() if k.startswith("genopt.")}
        if ck["state"].get("genopt"):
            optimizer_from_tensors(self.opt_g, gen_t, ck["state"]["genopt"])
        if self.train_gen:
            if "zbank" not in ck["tensors"]:
                raise ArtifactError(f"{ck['artifact'].path} has no historical bank; it is from "
                                    "a run with hat.train_generator = false")
            self.zbank = ck["tensors"]["zbank"].to(self.device)
            self.xbank = ck["tensors"]["xbank"].to(self.device)

    def begin(self) -> None:
        self.net.generator.eval()

    def schedule(self, step: int) -> None:
        for opt, base in ((self.opt_h, self.train.lr_adam), (self.opt_g, self.hat.lr_generator)):
            for g in opt.param_groups:
                g["lr"] = _lr(self.hat.lr_decay_step, base, step)

    def gradients(self, step: int) -> dict[str, float]:
        """Steps 1-2 up to the backward pass: X⁺, chains from fresh (Z, Y), X⁻ = G(Z) + Y."""
        net = self.net
        self.gen = make_generator(self.device, self.seed, "hat-train", step)
        pos = self.positives(self.batch, self.gen)
        z0, y0 = initial_state(net, self.batch, self.gen, self.device)
        self.z, self.y = hat_langevin(net, z0, y0, self.train.mcmc_steps, self.settings,
                                      self.gen)
        with torch.no_grad():
            self.neg = net.generate(self.z) + self.y
        net.hat.train()
        e_pos, e_neg = net.hat(pos).mean(), net.hat(self.neg).mean()
        loss = e_pos - e_neg
        self.opt_h.zero_grad(set_to_none=True)
        loss.backward()
        return {"energy_gap": loss.item(), "energy_pos": e_pos.item(), "energy_neg": e_neg.item()}

    def apply(self, step: int, terms: dict) -> None:
        """The hat's step (gradient clipped to ``hat.grad_clip`` when > 0), then step 3."""
        if self.hat.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.hat.parameters(), self.hat.grad_clip)
        self.opt_h.step()
        if self.train_gen:
            idx = torch.randperm(self.bank_size, generator=self.gen, device=self.device)[:self.batch]
            terms["generator_loss"] = generator_update(self.net, self.opt_g, self.zbank,
                                                       self.xbank, idx, self.hat.gen_loss_scale)
            self.zbank[idx], self.xbank[idx] = self.z, self.neg  # swap in the newest pairs

    def record(self, terms: dict) -> dict:
        rec = {**super().record(terms),
               "residual_norm": self.y.flatten(1).norm(dim=1).mean().item()}
        if "generator_loss" in terms:
            rec["generator_loss"] = terms["generator_loss"]
        return rec

    def checkpoint_state(self) -> tuple[torch.optim.Optimizer, dict, dict]:
        tensors = {"zbank": self.zbank, "xbank": self.xbank} if self.train_gen else {}
        gt, gmeta = optimizer_to_tensors(self.opt_g)
        tensors.update({f"genopt.{k}": v for k, v in gt.items()})
        return self.opt_h, tensors, {"genopt": gmeta}

    def samples(self) -> torch.Tensor:
        return self.neg

    def artifact_extra(self) -> dict:
        s = self.settings
        return {"mode": s.mode, "eps_y": s.eps_y, "eps_z": s.eps_z, "temperature": s.temperature,
                "mcmc_steps": self.train.mcmc_steps, "residual": s.residual,
                "residual_prior": s.residual_prior, "latent_shape": list(self.net.latent_shape),
                "generator_trained": bool(self.train_gen),
                "generator_source": str(self.hat.generator or "trained from scratch")}


def train_hat(sections: EnergyTrainingSections, hat: HatSections, record: RunRecord,
              bundle: DatasetBundle, out: Path, device: torch.device, resume: bool = False,
              force_resume: bool = False) -> Path:
    """Hat EBM training (:class:`HatRecipe`) with the typed ``sections`` and ``hat`` to the
    artifact ``out``, writing ``record`` beside it; ``resume`` continues from ``out``'s
    checkpoint (a ConfigError if its settings differ; ``force_resume`` allows the safe ones).
    Raises NumericalError on NaN/Inf, keeping the last checkpoint."""
    return EnergyTrainer(HatRecipe(sections, hat, record, bundle, device), out).run(
        resume, force_resume)
