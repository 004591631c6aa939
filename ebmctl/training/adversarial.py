"""Adversarial training of the task model (docs/adversarial-training.md): the profile section
``[adversarial]`` (:class:`AdversarialConfig`), the training attack, the training losses and the
held-out robust accuracy that picks the kept checkpoint.

Methods (``adversarial.method``):

* ``pgd``: Madry et al. 2018 ("Towards deep learning models resistant to adversarial attacks",
  Eq. 2.1): minimise E[max_{‖δ‖≤ε} L(f(x+δ), y)], the inner maximum approximated by N steps of
  PGD from a uniform random start in the ε-ball; the update sees the adversarial batch only.
* ``trades``: Zhang et al. 2019 ("Theoretically principled trade-off between robustness and
  accuracy", Eq. 5): minimise CE(f(x), y) + β·KL(p(x) ‖ p(x')), x' the PGD maximiser of the KL
  started at x + 0.001·N(0, I) (the authors' code); the KL is summed over classes and averaged
  over the batch.
* ``fgsm-rs``: Wong et al. 2020 ("Fast is better than free", Alg. 3): one FGSM step of size α
  (default 1.25·ε) from a uniform random start in the ε-ball, projected back to the ball.

The training attack is the attack package's threat model (:func:`ebmctl.attacks.threat.
random_start`, :func:`~ebmctl.attacks.threat.ascent_step`, :func:`~ebmctl.attacks.threat.
project`) and loss (:func:`ebmctl.attacks.losses.resolve_loss`, the task's own attack loss), not
a second PGD: ℓ∞ steps follow the gradient's sign, ℓ2 steps its normalised direction, and every
iterate is projected onto the ε-ball and [0,1].

BatchNorm: the training attack runs the network in **eval mode** (running statistics, no
dropout; the mode the TRADES and Rice et al. reference code craft in), so crafting never moves
the BatchNorm running statistics; the parameter update then runs in train mode, and its forward
pass (the adversarial batch; TRADES: the clean and the adversarial batch) updates them as in
natural training. Wong et al.'s FGSM-RS code crafts in train mode instead; one mode for every
method keeps the three comparable, and a single FGSM step barely depends on it.

Images are [0,1] tensors [B,C,H,W]; ε and α are in [0,1] pixel units (ℓ2: the Euclidean norm of
the whole image's perturbation in those units).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace
from typing import ClassVar, Collection, Iterator

import torch
import torch.nn.functional as F

from ebmctl.attacks.base import AttackConfig
from ebmctl.attacks.losses import resolve_loss
from ebmctl.attacks.threat import ascent_step, project, random_start
from ebmctl.config import Config, Fraction, setting
from ebmctl.contracts import Task
from ebmctl.errors import ConfigError

METHODS = ("none", "pgd", "trades", "fgsm-rs")
#: the mode the training attack runs the network in (see the module docstring)
CRAFT_MODE = "eval"


@dataclass(frozen=True)
class AdversarialConfig:
    """The profile section ``[adversarial]``: how ``ebmctl train classifier`` (and ``train
    model``) trains adversarially. ``method = "none"`` is natural training. Radii and steps are
    in [0,1] pixel units."""

    section: ClassVar[str] = "adversarial"

    method: str = setting("none", "none (natural training) | pgd (Madry et al. 2018) | trades "
                          "(Zhang et al. 2019) | fgsm-rs (Wong et al. 2020)", choices=METHODS)
    norm: str = setting("attack", "threat model of the training attack: linf | l2 | attack "
                        "(= attack.norm, the threat the profile evaluates)",
                        choices=("attack", "linf", "l2"))
    eps: Fraction = setting(0.0, "radius ε of the training attack in [0,1] pixel units "
                            "(linf: at most 1); 0 = the profile's attack radius for that norm "
                            "(attack.eps or attack.eps_l2)", minimum=0)
    steps: int = setting(10, "PGD steps of the training attack (pgd, trades; fgsm-rs takes "
                         "one step)", minimum=1)
    step_size: Fraction = setting(0.0, "α in [0,1] pixel units; 0 = 2.5·eps/steps (pgd, "
                                  "trades; Madry et al.) or 1.25·eps (fgsm-rs; Wong et al.)",
                                  minimum=0)
    beta: float = setting(6.0, "TRADES β: weight of the KL robustness term (trades only)",
                          minimum=0)
    eval_steps: int = setting(20, "steps of the held-out PGD that scores each epoch and picks "
                              "the kept checkpoint (more than adversarial.steps)", minimum=1)
    eval_images: int = setting(500, "validation images of the held-out robust accuracy",
                               minimum=1)

    @property
    def active(self) -> bool:
        return self.method != "none"

    @property
    def alpha(self) -> float:
        """The training attack's step α in [0,1] pixel units (``step_size``, or the method's
        default when it is 0)."""
        if self.step_size > 0:
            return float(self.step_size)
        if self.method == "fgsm-rs":
            return 1.25 * self.eps
        return 2.5 * self.eps / self.steps

    @property
    def eval_alpha(self) -> float:
        """α of the held-out PGD: 2.5·ε/N_eval (Madry et al.), [0,1] pixel units."""
        return 2.5 * self.eps / self.eval_steps

    def record(self) -> dict:
        """The settings as the artifact records them, with the derived step and the mode the
        training attack ran the network in."""
        return {**asdict(self), "alpha": self.alpha if self.active else None,
                "craft_mode": CRAFT_MODE}

    @classmethod
    def from_config(cls, cfg: Config) -> "AdversarialConfig":
        """The profile's ``[adversarial]`` section resolved and checked against its
        ``[attack]`` section (:func:`adversarial_settings`); ``steps`` and ``beta`` count as
        given when a profile, ``--set`` or an artifact set them.

        Raises:
            ConfigError: as :func:`adversarial_settings`.
        """
        given = {name for name in ("steps", "beta") if not cfg.is_default(f"adversarial.{name}")}
        return adversarial_settings(cfg.section(cls), cfg.section(AttackConfig), given=given)


def adversarial_settings(adv: AdversarialConfig, attack: AttackConfig, *,
                         given: Collection[str] = ()) -> AdversarialConfig:
    """The ``[adversarial]`` section ``adv``, checked, with ``norm = "attack"`` and ``eps = 0``
    resolved to the threat model of the ``[attack]`` section ``attack`` (the one the model will
    be evaluated at). ``given`` names the fields of ``adv`` the user set (not defaults): only
    those are refused when the method would ignore them.

    Raises:
        ConfigError: naming the key: an ℓ∞ radius above 1, a held-out PGD no stronger than the
            training attack, or a setting the method would ignore (``adversarial.beta`` without
            trades, ``adversarial.steps`` with fgsm-rs).
    """
    norm = attack.norm if adv.norm == "attack" else adv.norm
    eps = adv.eps or (attack.eps if norm == "linf" else attack.eps_l2)
    adv = replace(adv, norm=norm, eps=float(eps))
    if not adv.active:
        return adv
    if adv.norm == "linf" and adv.eps > 1:
        raise ConfigError(f"adversarial.eps = {adv.eps:g} exceeds 1, the whole [0,1] range, "
                          "under adversarial.norm = 'linf'")
    if adv.method == "fgsm-rs" and "steps" in given:
        raise ConfigError("adversarial.steps does not apply to adversarial.method = 'fgsm-rs' "
                          "(one step) and would be ignored")
    if adv.method != "trades" and "beta" in given:
        raise ConfigError(f"adversarial.beta applies to adversarial.method = 'trades' only, "
                          f"not {adv.method!r}, and would be ignored")
    train_steps = 1 if adv.method == "fgsm-rs" else adv.steps
    if adv.eval_steps <= train_steps:
        raise ConfigError(f"adversarial.eval_steps = {adv.eval_steps} must exceed the training "
                          f"attack's {train_steps} step(s): the held-out PGD must be stronger")
    return adv


@contextlib.contextmanager
def craft_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (BatchNorm running statistics, no dropout) and restore each
    submodule's own training flag afterwards; the parameters' gradients are untouched because
    the attack differentiates with respect to the images only."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def trades_kl(logits_adv: torch.Tensor, logits_nat: torch.Tensor) -> torch.Tensor:
    """KL(p(x) ‖ p(x')) per example [B] of logits [B,C] (natural, adversarial): Σ_c p_c(x)·
    (log p_c(x) − log p_c(x')), Zhang et al. 2019 Eq. 5's robustness term.

    Raises:
        ConfigError: outputs that are not [B,C] logits (TRADES is defined for classifiers).
    """
    if logits_adv.dim() != 2:
        raise ConfigError("adversarial.method = 'trades' needs classification outputs [B,C]; "
                          "use pgd or fgsm-rs for this task")
    log_p = F.log_softmax(logits_nat, dim=1)
    return (log_p.exp() * (log_p - F.log_softmax(logits_adv, dim=1))).sum(1)


def pgd_images(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, loss_fn,
               *, eps: float, norm: str, alpha: float, steps: int, start: torch.Tensor
               ) -> torch.Tensor:
    """``steps`` ascent steps of ``loss_fn(model(x'), target).sum()`` from ``start``, each
    projected onto the ε-ball around ``x`` and [0,1] (threat model of :mod:`ebmctl.attacks.
    threat`). ``x``, ``start``: [0,1] images [B,C,H,W]; returns x' [B,C,H,W], detached. The
    network runs as the caller left it (see :func:`craft_mode`)."""
    x_adv = project(start.detach(), x, eps, norm)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(model(x_adv), target).sum()
        grad, = torch.autograd.grad(loss, x_adv)
        x_adv = project(ascent_step(x_adv.detach(), grad, alpha, norm), x, eps, norm)
    return x_adv.detach()


def training_attack(model: torch.nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor,
                    adv: AdversarialConfig, generator: torch.Generator) -> torch.Tensor:
    """The training attack of ``adv.method`` on the [0,1] batch ``x`` [B,C,H,W] with targets
    ``y``, run in :data:`CRAFT_MODE`; every random draw from ``generator`` (on ``x``'s
    device). Returns x' [B,C,H,W] within ε of ``x`` (``adv.norm``) and in [0,1].

    Raises:
        ConfigError: ``adv.method`` is ``none``.
    """
    if not adv.active:
        raise ConfigError("adversarial.method = 'none' has no training attack")
    with craft_mode(model):
        if adv.method == "trades":
            with torch.no_grad():
                nat = model(x).detach()
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return pgd_images(model, x, nat, trades_kl, eps=adv.eps, norm=adv.norm,
                              alpha=adv.alpha, steps=adv.steps, start=x + 0.001 * noise)
        steps = 1 if adv.method == "fgsm-rs" else adv.steps
        return pgd_images(model, x, y, resolve_loss("ce", task), eps=adv.eps, norm=adv.norm,
                          alpha=adv.alpha, steps=steps,
                          start=random_start(x, adv.eps, adv.norm, generator))


def adversarial_loss(model: torch.nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor,
                     adv: AdversarialConfig, generator: torch.Generator,
                     memory_format: torch.memory_format = torch.contiguous_format
                     ) -> torch.Tensor:
    """The scalar training loss of one batch: the training attack (eval mode), then, with
    ``model`` in the mode the caller set (train), the task loss on x' (pgd, fgsm-rs) or
    CE(f(x), y) + β·mean KL(p(x) ‖ p(x')) (trades). ``x``: [0,1] images [B,C,H,W];
    ``memory_format``: the layout the update's forward pass gets x' in."""
    x_adv = training_attack(model, task, x, y, adv, generator)
    x_adv = x_adv.contiguous(memory_format=memory_format)
    if adv.method == "trades":
        logits_nat = model(x)
        return (task.train_loss(logits_nat, y)
                + adv.beta * trades_kl(model(x_adv), logits_nat).mean())
    return task.train_loss(model(x_adv), y)


def robust_accuracy(model: torch.nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor,
                    adv: AdversarialConfig, generator: torch.Generator, device: torch.device,
                    batch: int = 250) -> float:
    """Held-out robust score: the fraction of the [0,1] images ``x`` [M,C,H,W] that the model
    gets right (``task.score`` > 0.5) both clean and after ``adv.eval_steps`` PGD steps of size
    2.5·ε/N_eval from a uniform random start (ε, norm of ``adv``; the task's attack loss), in
    eval mode. Rice et al. 2020 keep the checkpoint with the best such figure."""
    loss_fn = resolve_loss("ce", task)
    ok = []
    with craft_mode(model):
        for i in range(0, len(x), batch):
            xb, yb = x[i:i + batch].to(device), y[i:i + batch].to(device)
            x_adv = pgd_images(model, xb, yb, loss_fn, eps=adv.eps, norm=adv.norm,
                               alpha=adv.eval_alpha, steps=adv.eval_steps,
                               start=random_start(xb, adv.eps, adv.norm, generator))
            with torch.no_grad():
                good = (task.score(model(xb), yb) > 0.5) & (task.score(model(x_adv), yb) > 0.5)
            ok.append(good.float().cpu())
    return torch.cat(ok).mean().item() if ok else float("nan")
