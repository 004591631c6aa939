"""Running the planned attacks: every attack on every seed against one model
(:func:`run_label`), resumable per chunk, and the single unrecorded runs of the sanity checks
(:func:`quick`)."""

from __future__ import annotations

from dataclasses import replace

from ebmctl.attacks.base import Attack
from ebmctl.console import progress_bar
from ebmctl.defense import Defense
from ebmctl.evaluate.attack_eval import evaluate_attack
from ebmctl.evaluate.convergence import check_tail
from ebmctl.evaluate.memory import MemoryProbe
from ebmctl.evaluate.results import AttackRow, Estimate, ModelResult, SeedResult
from ebmctl.evaluate.worst_case import masking_verdict, summarise_attack, worst_case


def progress_units(attack: Attack, n_images: int, batch: int) -> int:
    """Evaluation points of one seed of ``attack`` over ``n_images`` in chunks of ``batch``
    (what :func:`evaluate_attack` advances a progress bar by)."""
    return attack.restarts * (attack.steps + 1) * ((n_images + batch - 1) // batch)


def attack_seeds(attack: Attack, defense: Defense, task, x, y, device, seeds: list[int],
                 label: str, parts: dict, *, batch_size: int) -> AttackRow:
    """One attack on every seed against one model, ``batch_size`` images at a time (chunks
    resumable through ``parts``: the keywords ``parts_dir``, ``fingerprint``, ``resume`` of
    :func:`evaluate_attack`)."""
    total = len(seeds) * progress_units(attack, len(x), batch_size)
    probe = MemoryProbe(device).start()
    with progress_bar(total, f"attack {label} ({attack.name})") as bar:
        per_seed = [evaluate_attack(attack, defense, task, x, y, seed=s, batch_size=batch_size,
                                    device=device, label=label, progress=bar.advance, **parts)
                    for s in seeds]
    if defense.stochastic and attack.per_step_curve:
        # tell the verification's chance losses from attack progress (converged flag only)
        per_seed = [replace(r, tail_check=check_tail(
            defense, task, r.x_adv, x, y, r.per_image, len(r.accuracy_curve),
            key=(r.seed, label, attack.name), batch_size=batch_size, device=device))
            for r in per_seed]
    return summarise_attack(attack, per_seed, len(x), memory=probe.read())


def run_label(label: str, defense: Defense, attacks: list[Attack], task, x, y, device,
              seeds: list[int], parts: dict, *, batch_size: int,
              tolerance: float) -> ModelResult:
    """Every attack on every seed against one model: each attack's row and the per-image worst
    case over the headline attacks (a diagnostic run, the defender's noise fixed, never enters
    the headline unless it is all there is, and then the whole row says so). ``tolerance``:
    ``attack.sanity_tolerance`` of the gradient-masking verdict."""
    rows = {a.name: attack_seeds(a, defense, task, x, y, device, seeds, label, parts,
                                 batch_size=batch_size) for a in attacks}
    headline = [n for n, r in rows.items() if not r.diagnostic] or list(rows)
    worst = worst_case({n: rows[n].per_seed for n in headline})
    return ModelResult(
        attack=min(headline, key=lambda n: rows[n].adversarial.mean), n_images=len(x),
        n_seeds=len(seeds), natural=Estimate.over_seeds([w.natural for w in worst], len(x)),
        adversarial=Estimate.over_seeds([w.adversarial for w in worst], len(x)),
        per_image_robust=[int(v) for v in worst[0].robust_ok],
        converged=all(r.converged is not False for r in rows.values()),
        seconds=round(sum(r.seconds for r in rows.values()), 1),
        image_steps=sum(r.image_steps for r in rows.values()), attacks=rows, worst=worst,
        diagnostic=all(rows[n].diagnostic for n in headline),
        gradient_masking=masking_verdict({n: rows[n] for n in headline}, tolerance))


def quick(attack: Attack, defense: Defense, task, x, y, device, label: str, seed: int, *,
          batch_size: int) -> SeedResult:
    """One seed of one attack, no parts on disk (the sanity checks and the ε = 0 control)."""
    total = progress_units(attack, len(x), batch_size)
    with progress_bar(total, f"check {label} ({attack.name})") as bar:
        return evaluate_attack(attack, defense, task, x, y, seed=seed, batch_size=batch_size,
                               device=device, label=label, progress=bar.advance)
