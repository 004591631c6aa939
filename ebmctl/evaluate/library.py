"""``ebmctl.evaluate(model, x, y, ...)``: the CLI's attack evaluation on tensors a user holds.

The same code path as ``ebmctl attack`` (:func:`ebmctl.evaluate.runner.run_label`, its
attacks, sanity checks and table): per-attack rows with 95% intervals and accuracy-vs-step
curves, the per-image worst case over attacks, the ε = 0 control and the sanity checks. It is
called with typed settings: the default profile's sections (the profile also gives the
settings the arguments leave out, the task's own sections and the report's ``config``) with the
arguments in place (:func:`ebmctl.config.replace_checked`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from ebmctl.attacks.base import Attack, AttackConfig
from ebmctl.errors import ConfigError, InputError
from ebmctl.evaluate.results import AttackReport

#: the attack that follows each gradient mode of a defended model
ATTACK_FOR_GRADIENT = {"bpda": "bpda-eot", "full": "full-eot", "smooth": "smooth-eot"}


def _as_defended(model: nn.Module):
    from ebmctl.defended import DefendedModel, defend

    if isinstance(model, DefendedModel):
        return model
    if not isinstance(model, nn.Module):
        raise InputError(f"evaluate needs a torch.nn.Module classifier, got {type(model).__name__}")
    return defend(model, None)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             attacks: Sequence[str | Attack] | None = None, *, eps: float = 8 / 255,
             norm: str = "linf", steps: int = 50, step_size: float | None = None,
             restarts: int = 1, eot_reps: int | None = None, verify_reps: int | None = None,
             seeds: Sequence[int] = (0,), batch_size: int = 50, random_start: bool = True,
             sanity: bool = True, task: str = "classification",
             device: torch.device | str | None = None) -> AttackReport:
    """Attack ``model`` on the images ``x`` and return the same report as ``ebmctl attack``.

    Args:
        model: a :func:`ebmctl.defend` result (its defense is attacked with ebmctl's attacks,
            inside the thesis' Alg. 1 loop) or any classifier taking [0,1] images (wrap one that
            takes another range with ``ebmctl.defend(model, None, input_range=...)``). A
            model converted with ``.double()`` (its EBM too: ``ebmctl.defend`` converts it) is
            evaluated in float64, images, chains and attacks, whose results agree across CPUs
            (the report's ``run.dtype``); any other model in float32.
        x: images [N,C,H,W] in [0,1] pixel units (whatever the model's ``input_range``),
            converted to the evaluation's float type.
        y: labels [N] (int64).
        attacks: registry names (``bpda-eot``, ``full-eot``, ``smooth-eot``, ``apgd-ce``,
            ``pgd``, ``square``, ``transfer``, ...; see ``ebmctl plugins``) or
            :class:`~ebmctl.attacks.base.Attack` instances. Default: ``pgd`` for a
            deterministic model, else the attack matching the wrapper's ``gradient``.
        eps: radius in [0,1] pixel units (ℓ∞ or ℓ2 per ``norm``).
        norm: ``linf`` | ``l2``.
        steps: attack steps N.
        step_size: α in [0,1] units (default: 2/255 for ℓ∞, ε/4 for ℓ2).
        restarts: random restarts.
        eot_reps: H_adv (default: the profile's ``attack.eot_reps``; 1 when deterministic).
        verify_reps: H_def of the natural check and each verification (default: the
            wrapper's ``reps``).
        seeds: attack seeds; each is a full evaluation (mean ± std over seeds).
        batch_size: images attacked together.
        random_start: start each restart at a random point of the ε-ball.
        sanity: run the sanity checks (large ε, FGSM vs iterative, ε monotonicity, ε = 0
            control, transfer vs white-box).
        task: the task plugin whose loss and success rule apply.
        device: where to run (default: the model's parameters' device).

    Returns:
        The :class:`~ebmctl.evaluate.results.AttackReport` ``ebmctl attack`` builds, read like
        its JSON: ``results.<label>`` (``label`` = ``undefended`` or ``defended``) with
        ``natural``, ``adversarial`` (per-image worst case over attacks), ``*_ci`` (95%
        Wilson), ``attacks.<name>`` rows with ``accuracy_curve`` and ``converged``,
        ``per_image_robust``, ``eps0_control``; ``sanity``; ``threat``; ``config``
        (``report["results"]["defended"]["adversarial"]``, or the typed fields
        ``report.results["defended"].adversarial.mean``). ``report.to_json()`` is the JSON;
        ``ebmctl.evaluate.tables.result_rows`` gives its table's rows.

    Raises:
        InputError: ``x`` not 4-d, outside [0,1], or ``len(x) != len(y)``.
        ConfigError: an unknown attack name or invalid threat settings.
    """
    defended = _as_defended(model)
    dtype = _model_dtype(defended)
    x = _checked_images(x, y, dtype)
    if norm not in ("linf", "l2"):
        raise ConfigError(f"unknown norm {norm!r}; choose from linf, l2")
    device = torch.device(device if device is not None else next(
        (p.device for p in defended.parameters()), torch.device("cpu")))
    purified = defended.defense.purifies
    settings = _settings(_defaults(task), defended, norm=norm, eps=eps, steps=steps,
                         step_size=step_size, restarts=restarts, eot_reps=eot_reps,
                         verify_reps=verify_reps, seeds=seeds, batch_size=batch_size,
                         random_start=random_start, dtype=dtype)
    if attacks is None:
        attacks = [ATTACK_FOR_GRADIENT[defended.gradient] if purified else "pgd"]
    built = _built_attacks(settings, attacks, defended)
    results, checks = _run(settings, defended, built, settings.task, x, y, device, sanity)
    return _report(settings, task, defended, len(x), device, results, checks)


def _run(settings, defended, attacks: list[Attack], task, x, y, device, sanity: bool):
    """``({label: ModelResult}, SanityReport | None)``: every attack on every seed against
    the one model (``defended`` when it purifies, else ``undefended``), then the checks."""
    from ebmctl.evaluate.checks import sanity_checks
    from ebmctl.evaluate.runner import run_label

    label = "defended" if defended.defense.purifies else "undefended"
    results = {label: run_label(label, defended.defense, attacks, task, x, y, device,
                                list(settings.seeds), {},
                                batch_size=settings.attack.batch_size,
                                tolerance=settings.attack.sanity_tolerance)}
    if not sanity:
        return results, None
    checks, results = sanity_checks(settings, task, defended.task_model, x, y, device, results,
                                    [(label, defended.defense, attacks)])
    return results, checks


def _built_attacks(settings, attacks: Sequence[str | Attack], defended) -> list[Attack]:
    """``attacks`` built (names) or as given (instances), checked against the settings given
    and the defense before any work.

    Raises:
        ConfigError: no attack, an unknown name, a setting no attack takes, or a gradient mode
            the purifier cannot give.
    """
    from ebmctl.evaluate.plan import check_options_used, make_attack
    from ebmctl.plugins import get_registries

    registry = get_registries().attacks
    purified = defended.defense.purifies
    built = [a if isinstance(a, Attack) else make_attack(settings, a, purified,
                                                         cls=registry.get(a)) for a in attacks]
    if not built:
        raise ConfigError("give at least one attack")
    check_options_used(settings, built)
    for a in built:
        a.check_defense(defended.defense)
    return built


def _model_dtype(defended) -> torch.dtype:
    """The float type the evaluation runs in: float64 when the model was converted with
    ``.double()`` (then the EBM must be too: :func:`ebmctl.defend` converts it), else float32."""
    p = next((p for p in defended.parameters() if p.is_floating_point()), None)
    return torch.float64 if p is not None and p.dtype == torch.float64 else torch.float32


def _checked_images(x: torch.Tensor, y: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x`` detached as ``dtype``, after checking it is [N,C,H,W] in [0,1] with N = len(y) > 0.

    Raises:
        InputError: naming what is wrong.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise InputError("x must be an image tensor [N,C,H,W] in [0,1]")
    if len(x) != len(y) or len(x) == 0:
        raise InputError(f"x and y must hold the same, non-zero number of images "
                         f"({len(x)} vs {len(y)})")
    x = x.detach().to(dtype)
    if x.min() < 0 or x.max() > 1:
        raise InputError("x must be in [0,1] pixel units (ebmctl's eps and step size are too)")
    return x


def _defaults(task: str):
    """The evaluation settings of the default profile (schema defaults and the built-in
    profile) for the task plugin ``task``: the values of every setting :func:`evaluate` has no
    argument for, and the report's ``config``.

    Raises:
        ConfigError: no task plugin ``task``.
    """
    from ebmctl.context import evaluation_settings
    from ebmctl.plugins import get_registries
    from ebmctl.profiles import resolve

    profile = resolve(None)
    return evaluation_settings(profile, get_registries().tasks.get(task).configured(profile))


def _settings(base, defended, *, norm: str, eps: float, steps: int,
              step_size: float | None, restarts: int, eot_reps: int | None,
              verify_reps: int | None, seeds: Sequence[int], batch_size: int,
              random_start: bool, dtype: torch.dtype):
    """The evaluation settings of :func:`evaluate`: the default profile's (``base``) with the
    arguments and the wrapper's defense settings in place, each checked as its profile key
    would be; no dataset (the caller holds the images).

    Raises:
        ConfigError: a value the profile key would refuse (e.g. eps outside [0,1] for linf).
    """
    from ebmctl.config import RunRecord, replace_checked

    radius, step = ("eps", "step_size") if norm == "linf" else ("eps_l2", "step_size_l2")
    changes: dict = {"norm": norm, "steps": int(steps), "restarts": int(restarts),
                     "batch_size": int(batch_size), "seeds": [int(s) for s in seeds],
                     "random_start": random_start, radius: eps}
    if step_size is not None:
        changes[step] = step_size
    if eot_reps is not None:
        changes["eot_reps"] = eot_reps
    attack = replace_checked(base.attack, **changes)
    defense = replace_checked(base.defense, steps=defended.steps,
                              eot_reps=verify_reps or defended.reps,
                              average=defended.defense.average, clamp=defended.defense.clamp)
    return dataclasses.replace(base, attack=attack, defense=defense, dtype=dtype,
                               seeds=attack.seeds, load_data=None,
                               record=RunRecord(base.record.name, _record(
                                   base.record.to_dict(), attack, defense, dtype)))


def _record(profile: dict, attack: AttackConfig, defense, dtype: torch.dtype) -> dict:
    """The report's ``config``: the default profile with the sections the evaluation ran
    (lists as lists, as a profile file holds them) and its float type."""
    out = {section: dict(values) for section, values in profile.items()}
    for sec in (attack, defense):
        out[type(sec).section].update({k: list(v) if isinstance(v, tuple) else v
                                       for k, v in dataclasses.asdict(sec).items()})
    out["run"]["dtype"] = "float64" if dtype == torch.float64 else "float32"
    return out


def _report(settings, task_name: str, defended, n_images: int, device, results: dict,
            checks) -> AttackReport:
    """The :class:`AttackReport` of an ``ebmctl.evaluate`` call: the CLI's, with the wrapper's
    defense settings and the model's class name in place of artifact paths."""
    from ebmctl.context import environment
    from ebmctl.evaluate.plan import threat_of

    defense, attack, task = defended.defense, settings.attack, settings.task
    profile = settings.record.to_dict()
    config = {**profile, "task": {**profile.get("task", {}), "name": task_name}}
    return AttackReport(
        command="evaluate", task=task.name, metric=task.metric_name,
        dataset="tensors given to ebmctl.evaluate", split=None, n_images=n_images,
        seeds=list(attack.seeds), threat=threat_of(attack),
        defense={"purifier": None if defense.purifier is None or not defense.purifies else {
                     "name": defense.purifier.name, "settings": defense.purifier.settings(),
                     "stochastic": bool(defense.purifier.stochastic),
                     "differentiable": bool(defense.purifier.differentiable)},
                 "steps": defended.steps if defended.stochastic else 0,
                 "eot_reps": defense.reps, "attack_eot_reps": attack.eot_reps,
                 "average": defense.average, "gradient": defended.gradient,
                 "input_range": list(defended.input_range),
                 "ebm": defended.ebm.path if defended.ebm is not None else None},
        model=type(defended.model).__name__, results=results,
        environment=environment(device, seed=settings.seed, attack_seeds=attack.seeds),
        config=config, sanity=checks)
