"""Planning an evaluation: which models, which attacks at which radius, on which images, with
every setting checked before any work is done.

:class:`EvaluationSettings` holds the typed profile sections an evaluation reads, built once
by the command layer (:func:`ebmctl.context.evaluation_settings`) or from ``ebmctl.evaluate``'s
arguments; everything below the command takes it (or the fields it needs), never the whole
:class:`~ebmctl.config.Config`. :func:`plan_evaluation` loads the models, builds each
:class:`PlannedRun` (label, defense, attacks) and picks the evaluation images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from ebmctl.attacks.base import (
    OPTIONAL_SETTINGS,
    Attack,
    AttackConfig,
    build_attack,
)
from ebmctl.config import RunRecord, replace_checked
from ebmctl.console import info
from ebmctl.defense import Defense, DefenseConfig, LangevinPurifier, Purifier, PurifierContext
from ebmctl.errors import ConfigError
from ebmctl.evaluate.resubmit import EvaluateConfig, check_resubmission_settings
from ebmctl.evaluate.results import Threat
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.plugins import get_registries
from ebmctl.purifiers import build_purifier, parse_purifier_spec
from ebmctl.sampling.langevin import LangevinConfig

@dataclass(frozen=True)
class EvaluationSettings:
    """The typed sections an attack evaluation reads, and what it runs on.

    ``dtype``: the float type of models, images and Langevin chains (``run.dtype``).
    ``seeds``: the attack seeds (``attack.seeds``, else ``seed``). ``given``: the optional
    attack settings (field names of :data:`~ebmctl.attacks.base.OPTIONAL_SETTINGS`) that a
    profile, ``--set`` or a flag gave, the only ones an attack receives.
    ``resubmission_reps_given``: ``evaluate.eot_reps`` was given. ``task``: the configured
    task plugin (:class:`~ebmctl.contracts.Task`). ``load_data``: gives the dataset bundle the
    images come from (None where the caller holds the images). ``seed``: ``run.seed``, which
    the report's environment records. ``record``: the resolved profile, stored in the report
    and hashed for ``--resume``.

    The command layer builds it once (:func:`ebmctl.context.evaluation_settings`);
    :meth:`with_value` varies one setting (a sweep) without going back to the profile.
    """

    attack: AttackConfig
    defense: DefenseConfig
    langevin: LangevinConfig
    evaluate: EvaluateConfig
    dtype: torch.dtype
    seeds: tuple[int, ...]
    given: frozenset[str] = frozenset()
    resubmission_reps_given: bool = False
    task: Any = None
    load_data: Callable[[], Any] | None = None
    seed: int = 0
    record: RunRecord = field(default_factory=lambda: RunRecord("defaults", {}))

    def with_attack(self, **changes: Any) -> "EvaluationSettings":
        """These settings with ``attack`` fields replaced (e.g. ``eps=0.0``)."""
        return dataclasses.replace(self, attack=dataclasses.replace(self.attack, **changes))

    def with_value(self, key: str, value: Any) -> "EvaluationSettings":
        """These settings with the profile key ``key`` (``section.field`` of ``[attack]``,
        ``[defense]``, ``[langevin]`` or ``[evaluate]``) set to ``value``, checked as the
        profile would check it, as if the user had given it: the seeds, the settings given
        and the record follow.

        Raises:
            ConfigError: a key of another section, an unknown key or a bad value; a
                ``langevin.precision`` the float type refuses.
        """
        name, _, fname = key.partition(".")
        if name not in _VARIED:
            raise ConfigError(f"{key} is not an [attack], [defense], [langevin] or [evaluate] "
                              "setting, the ones one evaluation can vary")
        section = replace_checked(getattr(self, name), **{fname: value})
        if name == "langevin":
            section.check_dtype(self.dtype)
        typed = getattr(section, fname)
        values = self.record.to_dict()
        values.setdefault(name, {})[fname] = list(typed) if isinstance(typed, tuple) else typed
        changed = dataclasses.replace(self, **{name: section},
                                      record=RunRecord(self.record.name, values))
        if name == "attack":
            changed = dataclasses.replace(
                changed, seeds=tuple(section.seeds or (self.seed,)),
                given=self.given | ({fname} & set(OPTIONAL_SETTINGS)))
        if key == "evaluate.eot_reps":
            changed = dataclasses.replace(changed, resubmission_reps_given=True)
        return changed


#: the sections of :class:`EvaluationSettings` that :meth:`~EvaluationSettings.with_value` sets
_VARIED = ("attack", "defense", "langevin", "evaluate")


def make_attack(settings: EvaluationSettings, method: str, defended: bool, *,
                eps: float | None = None, cls: type | None = None) -> Attack:
    """The attack ``method`` (or class ``cls``) built by :func:`~ebmctl.attacks.base.
    build_attack` from ``settings.attack`` (``eps`` in place of its radius), H_def =
    ``defense.eot_reps``, and the optional settings in ``settings.given``.

    Raises:
        ConfigError: an unknown method, or a setting the attack's constructor rejects.
    """
    cls = cls or get_registries().attacks.get(method)
    return build_attack(cls, settings.attack, defended=defended, eps=eps,
                        verify_reps=settings.defense.eot_reps, given=settings.given)


def check_options_used(settings: EvaluationSettings, attacks: list[Attack]) -> None:
    """A setting the user gave that none of the attacks takes would be silently ignored.

    Raises:
        ConfigError: naming the key and the attacks run.
    """
    for name in OPTIONAL_SETTINGS:
        if name not in settings.given:
            continue
        key = f"attack.{name}"
        if not any(key in a.options_given for a in attacks):
            names = ", ".join(a.name for a in attacks)
            raise ConfigError(f"{key} does not apply to the attacks run ({names})")


def build_defense(settings: EvaluationSettings, model: TaskModel, ebm: EnergyModel | None,
                  device, fixer: torch.nn.Module | None = None,
                  purifier: Purifier | None = None) -> Defense:
    """:meth:`Defense.from_config` with the ``[defense]`` and ``[langevin]`` sections, its
    chains in ``settings.dtype``; ``purifier`` in place of the EBM's when given."""
    return Defense.from_config(model, None if purifier is not None else ebm, settings.defense,
                               settings.langevin, device, fixer, dtype=settings.dtype,
                               purifier=purifier)


def resolve_purifier(settings: EvaluationSettings, ebm: EnergyModel | None,
                     device) -> Purifier | None:
    """The purifier ``defense.purifier`` (``--purifier NAME[:key=value,...]``) names, built
    from the registered purifiers; None when it is empty (the EBM's Langevin purification with
    ``defense.steps`` and ``defense.clamp`` when there is an EBM, else no purifier).

    Raises:
        ConfigError: an unknown purifier or setting; an EBM given with a purifier other than
            ``ebm``; the ``ebm`` purifier without an EBM.
    """
    spec = settings.defense.purifier.strip()
    if not spec:
        return None
    name = parse_purifier_spec(spec)[0]
    if ebm is not None and name != LangevinPurifier.name:
        raise ConfigError(f"--ebm and --purifier {name} exclude each other: the EBM is the "
                          f"'{LangevinPurifier.name}' purifier (--purifier "
                          f"{LangevinPurifier.name}:steps=K)")
    context = PurifierContext(device=torch.device(device), dtype=settings.dtype, ebm=ebm,
                              defense=settings.defense, langevin=settings.langevin,
                              steps_chosen=True)
    return build_purifier(spec, get_registries().purifiers, context)


def pick_images(bundle, n_images: int, dtype: torch.dtype, split: str = "test"):
    """``(x [M,C,H,W] in [0,1] as dtype, y)``: ``n_images`` of the ``split`` of ``bundle``
    (all of it for 0 or more than it holds), a seeded choice kept in split order
    (:func:`ebmctl.data_utils.pick_subset`).

    Raises:
        ConfigError: the split is empty.
    """
    from ebmctl.data_utils import pick_subset

    data = bundle.split(split)
    n = min(n_images, len(data))
    if n == 0:
        raise ConfigError(f"the {split} split of {bundle.name!r} is empty")
    held = pick_subset(data, n)
    return held.x.to(dtype), held.y


def method_list(attack: AttackConfig, method: str | None, defended: bool) -> list[str]:
    """Attacks to run: ``method`` may be a comma list; else attack.methods / attack.method
    (attack.undefended_method for the undefended model).

    Raises:
        ConfigError: an unknown attack name (with a suggestion), before any work.
    """
    if not defended:
        return [m.strip() for m in attack.undefended_method.split(",") if m.strip()]
    if method:
        names = [m.strip() for m in method.split(",") if m.strip()]
    else:
        names = list(attack.methods) or [attack.method]
    registry = get_registries().attacks
    for m in names:
        registry.get(m)
    return names


def parts_dir_of(out: Path) -> Path:
    """Where an evaluation writing the report ``out`` keeps its per-attack parts."""
    return out.with_name(out.stem + ".parts")


def fingerprint(record: RunRecord, model_path: Path, ebm_path: Path | None,
                fixer_path: Path | None = None) -> str:
    """What a resumed evaluation must share with the one that wrote its parts: the profile
    (``record``, less where the run writes, its threads and device) and the contents (not the
    paths) of every model that shapes the result, so a model rewritten in place is noticed and
    one moved elsewhere is not."""
    from ebmctl.artifacts import file_digest

    d = json.loads(record.to_json())
    for key in ("out_dir", "threads", "device"):
        d.get("run", {}).pop(key, None)
    models = {"model": model_path, "ebm": ebm_path, "fixer": fixer_path}
    blob = json.dumps({"cfg": d, **{k: file_digest(p) if p else "" for k, p in models.items()}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def threat_of(attack: AttackConfig) -> Threat:
    """The threat model of the ``[attack]`` section (radius and step of the norm in force)."""
    return Threat(norm=attack.norm, eps=attack.radius, step_size=attack.step,
                  steps=attack.steps, restarts=attack.restarts)


class PlannedRun(NamedTuple):
    """One model to attack: its report label, its defense and its attacks (built before any
    work is done)."""

    label: str
    defense: Defense
    attacks: list[Attack]


@dataclass(frozen=True)
class EvaluationPlan:
    """What an evaluation attacks, with what, on which images: the task, the task model, the
    evaluation images ``x`` [M,C,H,W] in [0,1] and targets ``y``, the attack seeds, one
    :class:`PlannedRun` per model, where finished chunks are kept (``parts``: the keywords of
    :func:`~ebmctl.evaluate.attack_eval.evaluate_attack`) and the report's header fields."""

    task: Any
    model: TaskModel
    dataset: str
    x: torch.Tensor
    y: torch.Tensor
    seeds: list[int]
    runs: list[PlannedRun]
    parts: dict
    header: dict


class PlanRequest(NamedTuple):
    """What :func:`plan_evaluation` is asked for: the model files (``ebm_path`` and
    ``fixer_path`` only for defended runs), which models to evaluate, the defended attacks
    (``method``: a comma list, None = the profile's) and whether to resume."""

    model_path: Path
    ebm_path: Path | None
    fixer_path: Path | None = None
    undefended: bool = True
    defended: bool = True
    method: str | None = None
    resume: bool = False


def plan_evaluation(settings: EvaluationSettings, environment: dict, request: PlanRequest,
                    device: torch.device, out: Path) -> EvaluationPlan:
    """Load the models, build every defense and attack, pick the images (of the bundle
    ``settings.load_data()`` gives) for ``settings.task``: every setting is checked before any
    work is done.

    Raises:
        ConfigError: a model for another task, no purifier for a defended run, or settings
            that would be ignored.
    """
    task = settings.task
    model = TaskModel.load(request.model_path, device, settings.dtype)
    model.check_task(task.name)
    defended = request.defended
    ebm_path = request.ebm_path if defended else None
    fixer_path = request.fixer_path if defended else None
    ebm = EnergyModel.load(ebm_path, device, settings.dtype) if ebm_path else None
    purifier = resolve_purifier(settings, ebm, device) if defended else None
    if defended and ebm is None and purifier is None:
        raise ConfigError("a defended evaluation needs a purifier: --ebm FILE (the EBM's "
                          "Langevin purification) or --purifier NAME")
    runs = plan_runs(settings, model, ebm, device, request, purifier)
    bundle = settings.load_data()
    x, y = pick_images(bundle, settings.attack.n_images, settings.dtype)
    parts_dir = parts_dir_of(out)
    if request.resume and not parts_dir.exists():
        info(f"--resume: no partial results in {parts_dir}; starting from scratch")
    used = next((r.defense.purifier for r in runs if r.defense.purifier is not None), None)
    header = {"command": "attack", "task": task.name, "metric": task.metric_name,
              "dataset": bundle.name, "split": "test", "n_images": len(x),
              "threat": threat_of(settings.attack),
              "defense": defense_record(settings, device, ebm_path, fixer_path, used),
              "model": str(request.model_path), "environment": environment,
              "config": settings.record.to_dict()}
    return EvaluationPlan(
        task=task, model=model, dataset=bundle.name, x=x, y=y, seeds=list(settings.seeds),
        runs=runs, header=header,
        parts={"parts_dir": parts_dir, "resume": request.resume,
               "fingerprint": fingerprint(settings.record, request.model_path, ebm_path,
                                          fixer_path)})


def plan_runs(settings: EvaluationSettings, model: TaskModel, ebm: EnergyModel | None, device,
              request: PlanRequest, purifier: Purifier | None = None) -> list[PlannedRun]:
    """One :class:`PlannedRun` per model evaluated (the defended ones through ``purifier``,
    else the EBM's); every attack built and checked against its defense before any work.

    Raises:
        ConfigError: an unknown attack, a setting no attack takes, a gradient mode the
            defense cannot give, or resubmission settings that would be ignored.
    """
    def attacks(defended: bool) -> list[Attack]:
        names = method_list(settings.attack, request.method if defended else None, defended)
        return [make_attack(settings, m, defended) for m in names]

    runs = []
    if request.undefended:
        runs.append(PlannedRun("undefended", build_defense(settings, model, None, device),
                               attacks(False)))
    if request.defended:
        runs.append(PlannedRun("defended", build_defense(settings, model, ebm, device,
                                                         purifier=purifier), attacks(True)))
    if request.defended and request.fixer_path is not None:
        from ebmctl.models import load_fixer

        fixer = load_fixer(request.fixer_path, device, settings.dtype)
        runs.append(PlannedRun("defended+fixer",
                               build_defense(settings, model, ebm, device, fixer=fixer,
                                             purifier=purifier), attacks(True)))
    check_options_used(settings, [a for _, _, planned in runs for a in planned])
    for _, defense, planned in runs:  # e.g. attack.gradient_steps > defense.steps, before work
        for a in planned:
            a.check_defense(defense)
    check_resubmission_settings(settings.evaluate, runs,
                                eot_reps_given=settings.resubmission_reps_given)
    return runs


def defense_record(settings: EvaluationSettings, device, ebm_path: Path | None,
                   fixer_path: Path | None, purifier: Purifier | None = None) -> dict:
    """The report's ``defense`` record: the purifier by name with its settings (None for an
    undefended-only run), H_def, H_adv, the averaging and the EBM/fixer files."""
    defense = settings.defense
    named = None if purifier is None else {"name": purifier.name,
                                           "settings": purifier.settings(),
                                           "stochastic": bool(purifier.stochastic),
                                           "differentiable": bool(purifier.differentiable)}
    # K_def as the purifier runs it (--purifier ebm:steps=K, or the EBM's recorded K_def), not
    # the profile's value; 0 for a purifier without a chain
    steps = defense.steps if purifier is None else int(getattr(purifier, "steps", 0))
    return {"purifier": named, "steps": steps, "eot_reps": defense.eot_reps,
            # "auto" is bf16 on a CPU with native bf16 (and on CUDA): figures can move
            "precision": settings.langevin.precision_on(device, settings.dtype),
            "attack_eot_reps": settings.attack.eot_reps, "average": defense.average,
            "ebm": str(ebm_path) if ebm_path else None,
            "fixer": str(fixer_path) if fixer_path else None}
