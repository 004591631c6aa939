"""AutoAttack's aggregation semantics: an image is robust only if it survives every attack,
every restart and every step.

:func:`summarise_attack` turns one attack's per-seed results into its row, :func:`worst_case`
takes the per-image worst case over attacks, and :func:`white_box_accuracy` /
:func:`masking_verdict` compare the white-box attacks against those whose gradients never pass
the purifier (transfer, gradient-free): if one of those is stronger, gradient masking is
suspected (Athalye et al. 2018).
"""

from __future__ import annotations

import torch

from ebmctl.attacks.base import Attack
from ebmctl.evaluate.results import AttackRow, Estimate, MaskingVerdict, SeedResult, WorstCase
from ebmctl.evaluate.stats import still_falling

#: attacks whose gradients never pass the purifier: if one beats the white-box attacks, the
#: white-box gradients are suspect
NON_WHITE_BOX = ("classifier only", "none")


def summarise_attack(attack: Attack, per_seed: list[SeedResult], n: int,
                     memory: dict | None = None) -> AttackRow:
    """One attack's row: means over seeds with intervals, the worst-restart curve (mean over
    seeds) and whether it converged (None when its curve does not measure the defense step by
    step)."""
    curve = [sum(r.accuracy_curve[i] for r in per_seed) / len(per_seed)
             for i in range(len(per_seed[0].accuracy_curve))]
    converged = (not still_falling(curve) or only_chance_losses(per_seed)
                 if attack.per_step_curve else None)
    return AttackRow(
        name=attack.name, description=attack.description,
        gradient=attack.gradient_mode(),
        natural=Estimate.over_seeds([r.natural for r in per_seed], n),
        adversarial=Estimate.over_seeds([r.adversarial for r in per_seed], n), n_images=n,
        accuracy_curve=curve, converged=converged,
        seconds=round(sum(r.seconds for r in per_seed), 2),
        image_steps=sum(r.image_steps for r in per_seed), per_seed=list(per_seed),
        memory=memory, diagnostic=bool(attack.diagnostic))


def only_chance_losses(per_seed: list[SeedResult]) -> bool:
    """True when every seed's tail losses were re-verified against the stochastic defense and
    none was confirmed (:func:`ebmctl.evaluate.convergence.check_tail`): the curve fell over
    its tail only by the verification's chance, so the attack has converged."""
    return all(r.tail_check is not None and r.tail_check.confirmed == 0 for r in per_seed)


def worst_case(per_attack: dict[str, list[SeedResult]]) -> list[WorstCase]:
    """Per seed, the per-image worst case over attacks: an image is robust iff it passed the
    natural check and every attack left it unbroken. Its adversarial image is the first
    breaking attack's (in run order), else the last attack's final iterate.

    Args:
        per_attack: attack name → its results, one per seed (same seeds, same order), in run
            order.
    """
    names = list(per_attack)
    out = []
    for s in range(len(per_attack[names[0]])):
        nat = torch.tensor(per_attack[names[0]][s].natural_ok, dtype=torch.bool)
        rob = torch.ones_like(nat)  # unbroken by the attacks so far
        x_adv = per_attack[names[-1]][s].x_adv.clone()
        for name in names:
            r = per_attack[name][s]
            ok = torch.tensor(r.robust_ok, dtype=torch.bool)
            nat &= torch.tensor(r.natural_ok, dtype=torch.bool)
            broke = rob & ~ok  # first broken by this attack
            x_adv[broke] = r.x_adv[broke]
            rob &= ok
        rob &= nat
        out.append(WorstCase(seed=per_attack[names[0]][s].seed,
                             natural=nat.float().mean().item(),
                             adversarial=rob.float().mean().item(), natural_ok=nat.tolist(),
                             robust_ok=rob.tolist(), x_adv=x_adv))
    return out


def white_box_accuracy(attacks: dict[str, AttackRow], seeds: int | None = None) -> float | None:
    """Mean over seeds (the first ``seeds``; default all) of the per-image worst case over the
    white-box attacks in ``attacks``, the figure every masking verdict compares against; None
    if no white-box attack ran."""
    white = {n: a.per_seed[:seeds] for n, a in attacks.items()
             if a.gradient not in NON_WHITE_BOX}
    if not white:
        return None
    per_seed = worst_case(white)
    return sum(w.adversarial for w in per_seed) / len(per_seed)


def masking_verdict(attacks: dict[str, AttackRow], tolerance: float) -> MaskingVerdict | None:
    """The row's verdict: the strongest attack whose gradient never passes the purifier
    (transfer, gradient-free) against the per-image worst case over the white-box ones, means
    over seeds; None unless both kinds ran."""
    other = {n: a.adversarial.mean for n, a in attacks.items()
             if a.gradient in NON_WHITE_BOX}
    white = white_box_accuracy(attacks)
    if white is None or not other:
        return None
    name = min(other, key=other.get)
    return MaskingVerdict.compare(white, other[name], name, tolerance)
