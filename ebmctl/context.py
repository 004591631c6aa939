"""Resolve what a command needs from a config: device, task, dataset, environment record; and
the profile section ``[run]`` (:class:`RunConfig`) they start from."""

from __future__ import annotations

import platform
import typing
import sys
from dataclasses import dataclass
from typing import ClassVar

import torch

from ebmctl import __version__
from ebmctl.device import resolve_device, set_threads
from ebmctl.errors import ConfigError, EbmctlError, InputError
from ebmctl.plugins import get_registries
from ebmctl.config import Config, setting
from ebmctl.contracts import DataRequest, DatasetBundle, Task

if typing.TYPE_CHECKING:
    from ebmctl.evaluate.plan import EvaluationSettings


#: ``run.dtype`` -> the torch dtype of models, images and Langevin chains
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class RunConfig:
    """The profile section ``[run]``: the base seed, the device and CPU threads, the working
    float type of attack evaluations, and where commands write."""

    section: ClassVar[str] = "run"

    seed: int = setting(0, "base seed; every random draw is derived from it", minimum=0)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    threads: int = setting(0, "CPU threads (0 = torch default)", minimum=0)
    dtype: str = setting("float32", "float32 | float64 (`ebmctl attack` and ebmctl.evaluate): "
                         "float64 runs models, images and Langevin chains in float64, so results "
                         "agree across CPUs to ~1e-12 (reference runs and tests; 4-12x slower "
                         "on CPU)", choices=tuple(DTYPES))
    out_dir: str = setting("runs", "where commands write artifacts and reports")


@dataclass(frozen=True)
class TaskConfig:
    """The profile section ``[task]``: which task plugin the run is for. A task plugin adds its
    own keys to the section (segmentation: ``task.dice_*``)."""

    section: ClassVar[str] = "task"

    name: str = setting("classification", "task plugin")


@dataclass(frozen=True)
class DataConfig:
    """The profile section ``[data]``: the dataset, where it lies, how its images are resized and
    converted, and the deterministic split (:func:`data_request`). A dataset plugin may add
    keys of its own, handed to it as ``DataRequest.options``."""

    section: ClassVar[str] = "data"

    dataset: str = setting("digits", "dataset name (see `ebmctl plugins`)")
    root: str = setting("", "local root folder of the dataset (never downloaded)")
    image_size: int = setting(0, "resize images to this size (0 = native)", minimum=0)
    channels: int = setting(0, "convert to this many channels (0 = native)", minimum=0, maximum=4)
    val_fraction: float = setting(0.1, "validation share of the training data",
                                  minimum=0, maximum=0.9)
    test_fraction: float = setting(0.2, "test share where a set has no test split",
                                   minimum=0, maximum=0.9)
    split_seed: int = setting(0, "seed of the deterministic split", minimum=0)
    max_train: int = setting(0, "cap on training images (0 = all)", minimum=0)
    allow_pickle: bool = setting(False, "no longer supported: ebmctl never unpickles data (true "
                                 "is refused; kept so older artifacts' records still load)")


def setup_device(cfg: Config, *, honours_dtype: bool = False) -> torch.device:
    """Apply ``run.threads`` and ``langevin.compile`` to this process; the device ``run.device``
    names. A command that runs in ``run.dtype`` (:func:`working_dtype`) says so with
    ``honours_dtype``; every other command runs in float32 and refuses another ``run.dtype``
    rather than ignore it.

    Raises:
        ConfigError: a malformed device name, CUDA where there is none, or ``run.dtype`` other
            than float32 in a command that does not honour it.
    """
    run = cfg.section(RunConfig)
    if run.dtype != "float32" and not honours_dtype:
        raise ConfigError(f"run.dtype = {run.dtype!r} applies to `ebmctl attack` only; this "
                          "command runs in float32 (drop --set run.dtype)")
    set_threads(run.threads)
    from ebmctl.sampling.langevin import LangevinConfig, set_compile_default

    # LangevinSettings(compile=None) follows the profile
    set_compile_default(cfg.section(LangevinConfig).compile)
    return resolve_device(run.device)


def working_dtype(cfg: Config) -> torch.dtype:
    """The float type ``run.dtype`` names: what an attack evaluation loads its models in,
    converts its images to and runs its Langevin chains in. Under float64 the CPU kernels of
    different machines agree to ~1e-12, so a decision (argmax, gradient sign, broken or robust)
    can differ only where its margin is below that: in practice never.

    Raises:
        ConfigError: float64 with ``langevin.precision`` = bf16 | fp16, which would run the
            chains in reduced precision (``auto`` means full precision under float64).
    """
    from ebmctl.sampling.langevin import LangevinConfig

    dtype = DTYPES[cfg.section(RunConfig).dtype]
    cfg.section(LangevinConfig).check_dtype(dtype)
    return dtype


def get_task(cfg: Config) -> Task:
    """The task plugin ``task.name`` names, configured from the profile (its own sections).

    Raises:
        ConfigError: no task plugin of that name is loaded.
    """
    return get_registries().tasks.get(cfg.section(TaskConfig).name).configured(cfg)


def with_task_defaults(cfg: Config) -> Config:
    """Keys still at their schema default take the task's default dataset and architecture,
    so ``--set task.name=segmentation`` alone gives a runnable segmentation config."""
    tasks, name = get_registries().tasks, cfg.section(TaskConfig).name
    if name not in tasks:
        return cfg
    task = tasks.get(name)
    defaults = {"data.dataset": task.default_dataset, "model.arch": task.default_arch}
    changes = {k: v for k, v in defaults.items() if v and cfg.is_default(k) and cfg[k] != v}
    return cfg.with_overrides(changes, f"task {task.name} default") if changes else cfg


def data_request(cfg: Config) -> DataRequest:
    """The dataset plugin's request from the ``[data]`` section.

    Raises:
        ConfigError: ``data.allow_pickle = true`` (pickled data is never read).
    """
    data = cfg.section(DataConfig)
    if data.allow_pickle:
        raise ConfigError("data.allow_pickle = true is not supported: ebmctl never unpickles "
                          "data (pickles can run code); use an ImageFolder copy of the images")
    return DataRequest(root=data.root, image_size=data.image_size, channels=data.channels,
                       val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                       split_seed=data.split_seed, max_train=data.max_train,
                       options=cfg.section("data"))


#: radius and step keys of each norm, and the key of the other norm that would be ignored
_OTHER_NORM = {"l2": (("attack.eps", "attack.eps_l2"), ("attack.step_size", "attack.step_size_l2")),
               "linf": (("attack.eps_l2", "attack.eps"),
                        ("attack.step_size_l2", "attack.step_size"))}


def check_threat_settings(cfg: Config) -> None:
    """Reject a radius or step size given for the other norm (it would be ignored): given on
    the command line, or by the profile file that chose the norm.

    Raises:
        ConfigError: naming the key and the one to use instead.
    """
    from ebmctl.attacks.base import AttackConfig

    norm = cfg.section(AttackConfig).norm
    for key, instead in _OTHER_NORM[norm]:
        if cfg.chosen(key) or (cfg.from_profile(key) and cfg.from_profile("attack.norm")):
            raise ConfigError(f"{key} does not apply under attack.norm = {norm!r} and would be "
                              f"ignored; set {instead} instead")


def evaluation_settings(cfg: Config, task: Task | None = None) -> "EvaluationSettings":
    """The typed settings of an attack evaluation under the profile ``cfg``, built once: its
    sections, float type, seeds, the optional attack settings given, the task (``task``, else
    :func:`get_task`), the dataset (loaded on first use) and the profile's record.

    Raises:
        ConfigError: a radius or step of the other norm (:func:`check_threat_settings`),
            float64 with a reduced Langevin precision (:func:`working_dtype`), or no task
            plugin ``task.name``.
    """
    from ebmctl.attacks.base import OPTIONAL_SETTINGS, AttackConfig
    from ebmctl.defense import DefenseConfig
    from ebmctl.evaluate.plan import EvaluationSettings
    from ebmctl.evaluate.resubmit import EvaluateConfig
    from ebmctl.sampling.langevin import LangevinConfig

    check_threat_settings(cfg)
    attack, seed = cfg.section(AttackConfig), cfg.section(RunConfig).seed
    return EvaluationSettings(
        attack=attack, defense=cfg.section(DefenseConfig), langevin=cfg.section(LangevinConfig),
        evaluate=cfg.section(EvaluateConfig), dtype=working_dtype(cfg),
        seeds=tuple(attack.seeds or (seed,)),
        given=frozenset(name for name in OPTIONAL_SETTINGS
                        if not cfg.is_default(f"attack.{name}")),
        resubmission_reps_given=not cfg.is_default("evaluate.eot_reps"),
        task=task if task is not None else get_task(cfg),
        load_data=lambda: load_dataset(cfg), seed=seed, record=cfg.record())


def config_for_model(cfg: Config, path) -> Config:
    """``cfg`` with the dataset the model artifact at ``path`` was trained on, unless the
    profile or the command line chose one."""
    from ebmctl.models import artifact_dataset

    name = artifact_dataset(path)
    if name and cfg.is_default("data.dataset") and cfg.section(DataConfig).dataset != name:
        return cfg.with_overrides({"data.dataset": name}, "model artifact")
    return cfg


def dataset_loader(cfg: Config, source: str) -> typing.Callable[..., DatasetBundle]:
    """``load(**changes)``: :func:`load_dataset` of ``cfg`` with ``[data]`` fields changed
    (``image_size=32``, ``dataset="svhn"``, ...; their provenance ``source``), for a workflow
    that loads several sets without holding the profile.

    Raises (when called):
        ConfigError: a field ``[data]`` does not have or a bad value.
    """
    def load(**changes) -> DatasetBundle:
        over = {f"data.{name}": value for name, value in changes.items()}
        return load_dataset(cfg.with_overrides(over, source) if over else cfg)

    return load


_cache: dict[str, DatasetBundle] = {}


def load_dataset(cfg: Config) -> DatasetBundle:
    spec = get_registries().datasets.get(cfg.section(DataConfig).dataset)
    req = data_request(cfg)
    key = repr((spec.name, req))
    if key not in _cache:
        try:
            bundle = spec.load(req)
        except EbmctlError:
            raise
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load dataset {spec.name!r}: {exc}") from None
        _cache.clear()
        _cache[key] = bundle
    return _cache[key]


def runtime_environment(device: torch.device | str) -> dict:
    """The software and the device a run used: versions (ebmctl, torch, python, numpy,
    safetensors, the loaded plugins), the platform, the device and its name, and the threads.
    Reports (:func:`environment`) and ``ebmctl bench`` both start from this."""
    import numpy
    import safetensors

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    plugins = {n: p.version for n, p in get_registries().plugins.items() if p.error is None}
    return {
        "ebmctl": __version__, "torch": torch.__version__, "python": sys.version.split()[0],
        "numpy": numpy.__version__, "safetensors": safetensors.__version__,
        "platform": platform.platform(), "device": str(device), "device_name": name or "",
        "threads": torch.get_num_threads(), "plugins": plugins,
    }


def environment(device: torch.device, *, seed: int,
                attack_seeds: typing.Sequence[int] = ()) -> dict:
    """What a report needs to be reproduced: :func:`runtime_environment`, the run's ``seed``
    and, for an attack evaluation, its ``attack_seeds``. Reports store the resolved profile
    next to it under "config"."""
    env = runtime_environment(device)
    plugins = env.pop("plugins")  # listed last, after the seeds
    seeds = {"attack_seeds": list(attack_seeds)} if attack_seeds else {}
    return {**env, "seed": seed, **seeds, "plugins": plugins}
