"""Stochastic re-evaluation of the final adversarial images (worst-of-N; DiffHammer, Wang et al.
2024; the MEFA protocol's independent re-purification, Du, Hill & Cai 2026).

The thesis' Alg. 1 calls an image broken if *one* H_def verification at *any* attack step
misclassifies it (its "EOT verdict"). A stochastic defense can also be scored on the attack's
final images alone: re-purify each image N times independently, each time averaging H
replicates (``evaluate.resubmissions = N``, one evaluation per H in ``evaluate.eot_reps``), and
report per image and overall

* the mean accuracy over the N resubmissions (the expected accuracy of one submission), and
* the worst-of-N accuracy: robust only if all N resubmissions are correct (an attacker who may
  resubmit N times),

each with a 95% Wilson interval over the n images (:func:`~ebmctl.evaluate.stats.
accuracy_interval`). An image that failed the natural check is never robust. Worst-of-N ≤ the
mean over resubmissions, image by image. Resubmission j with H replicates draws its noise from
the key ``(seed, label, "resubmit", H, j, chunk start)``: independent of the attack's keys and of
every other resubmission.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ebmctl.config import setting
from ebmctl.console import progress_bar
from ebmctl.defense import Defense
from ebmctl.errors import ConfigError
from ebmctl.evaluate.results import ModelResult
from ebmctl.evaluate.stats import accuracy_interval


@dataclass(frozen=True)
class EvaluateConfig:
    """The profile section ``[evaluate]``: the worst-of-N re-evaluation of the final
    adversarial images (off by default)."""

    section: ClassVar[str] = "evaluate"

    resubmissions: int = setting(0, "N independent re-purifications of each final adversarial "
                                 "image (worst-of-N, DiffHammer); 0 = off", minimum=0)
    eot_reps: tuple[int, ...] = setting((1, 30, 100), "H replicates of each resubmission (one "
                                        "evaluation per value); used when "
                                        "evaluate.resubmissions > 0", minimum=1)


def check_resubmission_settings(settings: EvaluateConfig, runs: list[tuple], *,
                                eot_reps_given: bool = False) -> None:
    """Reject resubmission settings that would be ignored.

    Args:
        runs: the planned runs, ``(label, defense, attacks)`` each.
        eot_reps_given: the profile or ``--set`` gave ``evaluate.eot_reps``.

    Raises:
        ConfigError: ``evaluate.eot_reps`` given while ``evaluate.resubmissions`` = 0, or
            resubmissions asked for but no run has a stochastic (Langevin) defense.
    """
    n = settings.resubmissions
    if n == 0:
        if eot_reps_given:
            raise ConfigError("evaluate.eot_reps is only used with evaluate.resubmissions > 0")
        return
    if not any(defense.stochastic for _, defense, _ in runs):
        raise ConfigError(f"evaluate.resubmissions = {n} re-purifies the final adversarial "
                          "images, but no model evaluated has a stochastic defense (--ebm, "
                          "defense.steps > 0)")
    if not settings.eot_reps:
        raise ConfigError("evaluate.eot_reps must list at least one replicate count")


def resubmission_correct(defense: Defense, task, x_adv: torch.Tensor, y: torch.Tensor,
                         clean_score: torch.Tensor, *, resubmissions: int, reps: int, key: tuple,
                         batch_size: int, device: torch.device, progress=None) -> torch.Tensor:
    """Bool [N, n]: resubmission j of image i (H = ``reps`` replicates, fresh noise) is
    classified correctly (``task.robust_ok`` against the image's clean score).

    Args:
        x_adv: [n,C,H,W] final adversarial images in [0,1].
        y: targets [n,...]; clean_score: the task's clean score of each image [n].
        key: seed key; resubmission j of the chunk starting at s uses ``(*key, j, s)``.
    """
    ok = torch.zeros(resubmissions, len(x_adv), dtype=torch.bool)
    for j in range(resubmissions):
        for start in range(0, len(x_adv), batch_size):
            xb = x_adv[start:start + batch_size].to(device)
            yb = y[start:start + batch_size].to(device)
            out = defense.predict(xb, reps, (*key, j, start))
            score = task.score(out, yb).float()
            ok[j, start:start + len(xb)] = task.robust_ok(
                score, clean_score[start:start + len(xb)].to(score.device)).cpu()
            if progress is not None:
                progress(1)
    return ok


def summarise_resubmissions(correct: torch.Tensor, natural_ok: torch.Tensor) -> dict:
    """Figures of one H from ``correct`` (bool [N, n]) and the natural check (bool [n]).

    Returns ``mean`` (mean accuracy over the N resubmissions), ``worst_of_n`` (robust only if
    all N are correct), their ``*_ci`` (95% Wilson over n images) and the per-image values
    ``per_image_mean`` (fraction of resubmissions correct) and ``per_image_worst_of_n`` (0/1).
    """
    nat = natural_ok.bool()
    per_mean = correct.float().mean(0) * nat.float()
    per_worst = correct.all(0) & nat
    n = correct.shape[1]
    mean, worst = per_mean.mean().item(), per_worst.float().mean().item()
    return {"mean": mean, "mean_ci": accuracy_interval(mean, n),
            "worst_of_n": worst, "worst_of_n_ci": accuracy_interval(worst, n),
            "per_image_mean": [round(v, 6) for v in per_mean.tolist()],
            "per_image_worst_of_n": [int(v) for v in per_worst.tolist()]}


def resubmit_images(defense: Defense, task, x_adv: torch.Tensor, y: torch.Tensor,
                    natural_ok: torch.Tensor, robust_ok: torch.Tensor,
                    clean_score: torch.Tensor, *, resubmissions: int, eot_reps: list[int],
                    key: tuple, batch_size: int, device: torch.device, progress=None) -> dict:
    """The resubmission figures of one set of final adversarial images [n,C,H,W] in [0,1].

    ``natural_ok``/``robust_ok`` (bool [n]) are the attack's Alg. 1 outcomes: ``eot_verdict``
    is the thesis' verdict (robust iff no H_def verification at any step broke the image).
    ``by_eot_reps[str(H)]`` holds :func:`summarise_resubmissions` for each H.
    """
    n = len(x_adv)
    verdict = (robust_ok.bool() & natural_ok.bool()).float().mean().item()
    out = {"n_images": n, "resubmissions": resubmissions,
           "eot_verdict": verdict, "eot_verdict_ci": accuracy_interval(verdict, n),
           "per_image_eot_verdict": [int(v) for v in (robust_ok.bool()
                                                       & natural_ok.bool()).tolist()],
           "by_eot_reps": {}}
    for h in eot_reps:
        correct = resubmission_correct(defense, task, x_adv, y, clean_score,
                                       resubmissions=resubmissions, reps=h,
                                       key=(*key, "resubmit", h), batch_size=batch_size,
                                       device=device, progress=progress)
        out["by_eot_reps"][str(h)] = summarise_resubmissions(correct, natural_ok)
    return out


def resubmission_report(settings: EvaluateConfig, label: str, defense: Defense, task,
                        x: torch.Tensor, y: torch.Tensor, device: torch.device,
                        row: ModelResult, *, batch_size: int) -> dict:
    """Worst-of-N re-evaluation of a label's final adversarial images, seed = the last
    attack seed: the per-image worst case over attacks (``worst_case``) and each attack's own
    (``attacks.<name>``). Clean scores come from one natural check with H_def replicates;
    images go through the defense ``batch_size`` (``attack.batch_size``) at a time."""
    n_sub, reps = settings.resubmissions, list(settings.eot_reps)
    batch = batch_size
    seed = next(iter(row.attacks.values())).per_seed[-1].seed
    key = (seed, label)
    clean = []
    for start in range(0, len(x), batch):
        out = defense.predict(x[start:start + batch].to(device), defense.reps,
                              (*key, "resubmit-natural", start))
        clean.append(task.score(out, y[start:start + batch].to(device)).float().cpu())
    clean_score = torch.cat(clean)
    worst = row.worst[-1]
    sets = [("worst_case", worst.x_adv, worst.natural_ok, worst.robust_ok)]
    for name, a in row.attacks.items():
        last = a.per_seed[-1]
        sets.append((name, last.x_adv, last.natural_ok, last.robust_ok))
    total = len(sets) * len(reps) * n_sub * ((len(x) + batch - 1) // batch)
    report = {"seed": seed, "resubmissions": n_sub, "eot_reps": reps,
              "semantics": "eot_verdict = Alg. 1 (broken at any step, H_def); mean = mean "
                           "accuracy over N independent re-purifications of the final images; "
                           "worst_of_n = robust only if all N are correct; *_ci = 95% Wilson "
                           "over n_images",
              "attacks": {}}
    with progress_bar(total, f"resubmit {label}") as bar:
        for name, x_adv, nat, rob in sets:
            fig = resubmit_images(defense, task, x_adv, y,
                                  torch.as_tensor(nat, dtype=torch.bool),
                                  torch.as_tensor(rob, dtype=torch.bool), clean_score,
                                  resubmissions=n_sub, eot_reps=reps, key=(*key, name),
                                  batch_size=batch, device=device, progress=bar.advance)
            if name == "worst_case":
                report["worst_case"] = fig
            else:
                report["attacks"][name] = fig
    return report


def resubmission_rows(label: str, res: dict) -> list[tuple[str, str, str, str, str]]:
    """Rows (model, attack, natural, adversarial, note) of the printed table: the worst case's
    mean and worst-of-N accuracy for each H, with 95% Wilson intervals."""
    rows = []
    wc = res["worst_case"]
    for h, fig in wc["by_eot_reps"].items():
        for what, value, ci in (("mean over", fig["mean"], fig["mean_ci"]),
                                ("worst of", fig["worst_of_n"], fig["worst_of_n_ci"])):
            rows.append((label, f"final images, {what} N={res['resubmissions']} "
                                f"resubmissions (H={h})", "",
                         f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
                         f"EOT verdict {wc['eot_verdict']:.3f}"))
    return rows
