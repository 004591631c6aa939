"""Sanity checks that can fail (Athalye et al. 2018), one ``check_*`` function each, returning
a :class:`~ebmctl.evaluate.results.SanityCheck`; a failed check flags an attack or evaluation
bug, or, for the transfer check, gradient masking.

Undefended: a large radius breaks the model (:func:`check_large_radius`); an iterative attack
beats one FGSM step (:func:`check_iterative_beats_fgsm`). Per model: ε = 0 leaves a
deterministic model at its natural accuracy (:func:`eps_zero_control`,
:func:`check_deterministic_control`); accuracy does not rise with ε
(:func:`check_monotone_in_eps`); a transfer attack from the bare classifier is not stronger
than the white-box attacks (:func:`check_transfer`). :func:`sanity_checks` runs them all.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ebmctl.attacks.base import Attack
from ebmctl.defense import Defense
from ebmctl.evaluate.plan import EvaluationSettings, build_defense, make_attack
from ebmctl.evaluate.results import (
    Eps0Control,
    MaskingVerdict,
    ModelResult,
    SanityCheck,
    SanityReport,
    SeedResult,
)
from ebmctl.evaluate.runner import quick
from ebmctl.evaluate.worst_case import white_box_accuracy
from ebmctl.models import TaskModel
from ebmctl.plugins import get_registries


def sanity_checks(settings: EvaluationSettings, task, model: TaskModel, x: torch.Tensor,
                  y: torch.Tensor, device, results: dict[str, ModelResult], runs: list
                  ) -> tuple[SanityReport, dict[str, ModelResult]]:
    """Every check: the undefended ones, then per planned run ``(label, defense, attacks)``
    its own. Returns the checks and ``results`` with each checked model's ε = 0 control and
    the transfer check's masking verdict filled in."""
    bare = build_defense(settings, model, None, device)
    und = results.get("undefended")
    checks = [check_large_radius(settings, bare, task, x, y, device),
              check_iterative_beats_fgsm(settings, bare, task, x, y, device,
                                         und.adversarial.mean if und is not None else None)]
    results = dict(results)
    for label, defense, attacks in runs:
        more, results[label] = _model_checks(settings, label, defense, attacks, task, x, y,
                                             device, results[label])
        checks += more
    return SanityReport(checks), results


def check_large_radius(settings: EvaluationSettings, bare: Defense, task, x, y,
                       device) -> SanityCheck:
    """PGD at ``attack.sanity_eps`` (per pixel; scaled by √D under ℓ2) on the first
    ``attack.sanity_images`` images leaves at most 5% of the undefended model robust."""
    attack = settings.attack
    n = min(attack.sanity_images, len(x))
    big = attack.sanity_eps * (1.0 if attack.norm == "linf" else (x[0].numel() ** 0.5))
    large = get_registries().attacks.get("pgd")(
        norm=attack.norm, eps=big, step_size=big / 8, steps=max(20, attack.steps), restarts=1,
        random_start=True)
    res = quick(large, bare, task, x[:n], y[:n], device, "sanity-large-eps", 0,
                batch_size=attack.batch_size)
    return SanityCheck("a large radius drives the undefended model to ~0",
                       res.adversarial <= 0.05,
                       {"radius": big, "images": n, "adversarial": res.adversarial})


def check_iterative_beats_fgsm(settings: EvaluationSettings, bare: Defense, task, x, y, device,
                               iterative: float | None) -> SanityCheck:
    """The undefended model's adversarial accuracy under the iterative attack (``iterative``,
    else a PGD run of its own) is at most one FGSM step's plus ``attack.sanity_tolerance``."""
    attack, tol = settings.attack, settings.attack.sanity_tolerance
    fgsm = get_registries().attacks.get("fgsm")(norm=attack.norm, eps=attack.radius)
    single = quick(fgsm, bare, task, x, y, device, "sanity-fgsm", 0,
                   batch_size=attack.batch_size).adversarial
    if iterative is None:
        iterative = quick(make_attack(settings, "pgd", False), bare, task, x, y, device,
                          "sanity-pgd", 0, batch_size=attack.batch_size).adversarial
    return SanityCheck(f"iterative attack at least as strong as one FGSM step "
                       f"(undefended, tolerance {tol})", iterative <= single + tol,
                       {"fgsm": single, "iterative": iterative})


def eps_zero_control(settings: EvaluationSettings, label: str, defense: Defense,
                     attacks: list[Attack], task, x, y, device, seed: int) -> Eps0Control:
    """The first attack at ε = 0: nothing moves, so any image it "breaks" is broken by Alg. 1's
    repeated stochastic verification alone. ``inflation`` = natural − ε0 accuracy, both on the
    first ``attack.control_images`` images (0 = all of ``x``), with the attack's full schedule
    (every step screens and verifies, so the control can still fail)."""
    n = settings.attack.control_images or len(x)
    x, y = x[:n], y[:n]
    att = make_attack(settings, attacks[0].name, defense.stochastic, eps=0.0,
                      cls=type(attacks[0]))
    res = quick(att, defense, task, x, y, device, f"{label}-eps0", seed,
                batch_size=settings.attack.batch_size)
    return Eps0Control(attack=att.name, seed=seed, n_images=len(x), natural=res.natural,
                       adversarial=res.adversarial,
                       per_image_robust=[int(v) for v in res.robust_ok])


def check_deterministic_control(label: str, control: Eps0Control) -> SanityCheck:
    """A deterministic model loses nothing at ε = 0 (its control's inflation is 0)."""
    return SanityCheck(f"{label}: eps = 0 leaves the deterministic model at its natural "
                       "accuracy", abs(control.inflation) < 1e-9, control.to_json())


def check_monotone_in_eps(settings: EvaluationSettings, label: str, defense: Defense,
                          attacks: list[Attack], task, x, y, device, control: Eps0Control,
                          first: SeedResult) -> SanityCheck:
    """Adversarial accuracy at ε = 0 (the control), ε/2 (a run of its own) and ε (the first
    seed of the first attack) does not rise by more than ``attack.sanity_tolerance``, on the
    first ``attack.sanity_images`` images."""
    attack, tol = settings.attack, settings.attack.sanity_tolerance
    n = min(attack.sanity_images, len(x))
    eps = attack.radius
    half = make_attack(settings, attacks[0].name, defense.stochastic, eps=eps / 2,
                       cls=type(attacks[0]))
    at_half = quick(half, defense, task, x[:n], y[:n], device, f"{label}-half-eps",
                    first.seed, batch_size=attack.batch_size)
    m = min(n, control.n_images)  # the control may hold fewer images than the check
    curve = [sum(control.per_image_robust[:m]) / m, at_half.adversarial,
             sum(first.robust_ok[:n]) / n]
    return SanityCheck(f"{label}: accuracy does not rise with eps ({attacks[0].name}, "
                       f"first {n} images, tolerance {tol})",
                       all(b <= a + tol for a, b in zip(curve, curve[1:])),
                       {"eps": [0.0, eps / 2, eps], "adversarial": curve})


def _model_checks(settings: EvaluationSettings, label: str, defense: Defense,
                  attacks: list[Attack], task, x, y, device,
                  row: ModelResult) -> tuple[list[SanityCheck], ModelResult]:
    """Per model: the ε = 0 control, accuracy non-increasing in ε, and (purified) transfer not
    stronger than the white-box attacks. Returns the checks and ``row`` with its control and
    masking verdict."""
    first = row.attacks[attacks[0].name].per_seed[0]
    control = eps_zero_control(settings, label, defense, attacks, task, x, y, device,
                               first.seed)
    row = replace(row, eps0_control=control)
    checks = [] if defense.stochastic else [check_deterministic_control(label, control)]
    checks.append(check_monotone_in_eps(settings, label, defense, attacks, task, x, y, device,
                                        control, first))
    if defense.purifies:  # masking is a risk of every purifier, random or not
        check, masking = check_transfer(settings, label, defense, task, x, y, device, row,
                                        first.seed)
        checks.append(check)
        row = replace(row, gradient_masking=masking)
    return checks, row


def check_transfer(settings: EvaluationSettings, label: str, defense: Defense, task, x, y,
                   device, row: ModelResult,
                   seed: int) -> tuple[SanityCheck, MaskingVerdict | None]:
    """A transfer attack from the bare classifier against the per-image worst case over the
    white-box attacks, by :func:`white_box_accuracy` as in the row's masking verdict: over
    every seed when the transfer attack is among the row's attacks (then the check and the
    row's verdict compare the same two figures), else on the first seed, where the check runs
    its own transfer attack. Returns the check and the row's verdict: a failed check replaces
    it; a passed one leaves it (or records "not suspected" where the row had none)."""
    tol = settings.attack.sanity_tolerance
    if "transfer" in row.attacks:
        transfer, seeds = row.attacks["transfer"].adversarial.mean, None
    else:
        att = make_attack(settings, "transfer", True)
        transfer = quick(att, defense, task, x, y, device, f"{label}-transfer", seed,
                         batch_size=settings.attack.batch_size).adversarial
        seeds = 1
    white_acc = white_box_accuracy(row.attacks, seeds)
    if white_acc is None:
        return SanityCheck(f"{label}: transfer not stronger than white-box", True,
                           {"note": "no white-box attack was run"}), row.gradient_masking
    verdict = MaskingVerdict.compare(white_acc, transfer, "transfer", tol)
    check = SanityCheck(f"{label}: a transfer attack from the bare classifier is not stronger "
                        f"than the white-box attacks (tolerance {tol}); if it is, gradient "
                        "masking is suspected", not verdict.suspected,
                        {"transfer": transfer, "white_box": white_acc})
    if verdict.suspected:
        return check, verdict
    return check, (row.gradient_masking if row.gradient_masking is not None
                   else MaskingVerdict(False))
