"""Model import: classifiers and EBMs from elsewhere as ebmctl artifacts (``ebmctl import-model``).

Sources (``SOURCE`` of ``ebmctl import-model``):

* ``torchvision:<name>``: a torchvision architecture built with ``weights=None`` (never a
  download), its weights from ``--weights FILE``; ``timm:<name>`` likewise (timm optional);
* ``robustbench:<name>`` (or ``robustbench:<dataset>/<threat>/<name>``): a RobustBench model from
  a *local* model directory in RobustBench's layout ``<dir>/<dataset>/<threat>/<name>.pt``
  (``--robustbench-dir`` or ``$ROBUSTBENCH_DIR``; never downloaded), its architecture from
  ``robustbench.model_zoo`` (the optional ``robustbench`` extra);
* ``path/to/module.py:factory``: the user's own architecture, ``factory(**kwargs)`` returning an
  ``nn.Module``. This runs that file's code, now and every time the artifact is loaded;
* ``ebm-defense:ebm`` / ``ebm-defense:wrn``: the EBM and WideResNet state dicts released with
  the thesis authors' PyTorch code (point0bar1/ebm-defense, ``nets.py``). Their EBM maps onto
  ebmctl's ``lightweight`` EBM; their update ``X ← X − ∇E(X) + εZ`` (ε = 0.01, pixels in
  [-1,1]) is ebmctl's ``X − (τ²/2T)·∇U + τZ`` with τ = ε and T = ε²/2. Their WRN (biased
  convolutions, shortcut on the raw input) is the ``ebm-defense-wrn`` architecture here.

Weights files are recognised by content, not by name: safetensors, or a *state dict* saved by
``torch.save`` (zip archive or legacy pickle, any extension) read with
``torch.load(weights_only=True)``; a pickled module (or anything but tensors) is refused.
Checkpoint containers (``state_dict``, ``model``, ``net``) and the ``module.`` / ``_orig_mod.``
prefixes are removed, and the weights go through ``load_state_dict(strict=True)``. The
artifact records the source, the weights file's SHA-256 and the input normalisation.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ebmctl.errors import ArtifactError, ConfigError, InputError, NotAvailableError

#: the authors' Langevin noise ε (config_attack/bpda_eot_attack.json: langevin_eps)
EBM_DEFENSE_EPS = 0.01


# --- architectures the artifacts rebuild -------------------------------------------------

class Normalized(nn.Module):
    """``net((x − mean) / std)`` for [0,1] images x [B,C,H,W]; mean/std per channel (or one
    value), stored in the artifact's ``arch_args``, not as tensors."""

    def __init__(self, net: nn.Module, mean: list[float] | None = None,
                 std: list[float] | None = None):
        super().__init__()
        self.net = net
        mean, std = list(mean or [0.0]), list(std or [1.0])
        if any(s <= 0 for s in std):
            raise ConfigError(f"--std values must be > 0, got {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.identity = all(m == 0 for m in mean) and all(s == 1 for s in std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x if self.identity else (x - self.mean) / self.std)


def torchvision_classifier(name: str, num_classes: int = 1000, mean: list | None = None,
                           std: list | None = None) -> nn.Module:
    """A torchvision architecture with random weights (``weights=None``: never downloads)."""
    import torchvision

    try:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        known = torchvision.models.list_models()
        from ebmctl.registry import did_you_mean

        raise ConfigError(f"unknown torchvision model {name!r}{did_you_mean(name, known)}") from None
    return Normalized(net, mean, std)


def timm_classifier(name: str, num_classes: int = 1000, mean: list | None = None,
                    std: list | None = None) -> nn.Module:
    """A timm architecture with random weights (``pretrained=False``); needs ``timm``."""
    try:
        import timm
    except ImportError:
        raise NotAvailableError("timm:<name> needs timm: pip install timm") from None
    try:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ConfigError(f"timm: {exc}") from None
    return Normalized(net, mean, std)


def python_factory(path: str, factory: str, kwargs: dict | None = None,
                   mean: list | None = None, std: list | None = None) -> nn.Module:
    """``factory(**kwargs)`` from the Python file ``path`` (runs that file's code)."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"model source file not found: {file}")
    spec = importlib.util.spec_from_file_location(f"ebmctl_user_model_{abs(hash(str(file)))}",
                                                  file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise InputError(f"{file}: importing it failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise InputError(f"{file} has no callable {factory!r}")
    try:
        net = fn(**(kwargs or {}))
    except Exception as exc:
        raise InputError(f"{file}:{factory}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(net, nn.Module):
        raise InputError(f"{file}:{factory}() returned {type(net).__name__}, not an nn.Module")
    return Normalized(net, mean, std)


class _AuthorsWideBlock(nn.Module):
    """Pre-activation wide block in the key layout of the authors' ``wide_basic``."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=True))

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class EbmDefenseWRN(nn.Module):
    """The WideResNet of the thesis authors' code (input [B,3,32,32] in [-1,1]; the stride sits
    on each block's second convolution, the shortcut takes the raw input)."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError("WRN depth must be 6n+4")
        n, k = (depth - 4) // 6, widen_factor
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=True)
        cin = widths[0]
        for i, stride in enumerate((1, 2, 2)):
            blocks = []
            for j in range(n):
                blocks.append(_AuthorsWideBlock(cin, widths[i + 1], stride if j == 0 else 1))
                cin = widths[i + 1]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.9)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def ebm_defense_wrn(**kw) -> nn.Module:
    return EbmDefenseWRN(**kw)


#: RobustBench's datasets and threat models (robustbench.model_zoo.enums), the folders of its
#: model directory, and what the datasets' models take: classes and input size
ROBUSTBENCH_DATASETS = {"cifar10": (10, 32), "cifar100": (100, 32), "imagenet": (1000, 224)}
ROBUSTBENCH_THREATS = ("Linf", "L2", "corruptions")


def _robustbench_zoo() -> dict:
    """``robustbench.model_zoo.models.model_dicts``.

    Raises:
        NotAvailableError: robustbench is not installed (or fails to import).
    """
    try:
        from robustbench.model_zoo.models import model_dicts
    except ImportError as exc:
        raise NotAvailableError(f"robustbench:<name> needs the robustbench package ({exc}): "
                                "pip install 'ebmctl[robustbench]'") from None
    return model_dicts


def _robustbench_entry(zoo: dict, name: str, dataset: str, threat: str) -> dict:
    for ds, threats in zoo.items():
        if getattr(ds, "value", ds) != dataset:
            continue
        for tm, models in threats.items():
            if getattr(tm, "value", tm) == threat and name in models:
                return models[name]
    raise ConfigError(f"robustbench has no model {name!r} for {dataset}/{threat} in its "
                      "model zoo (check the name and the folders it sits in)")


def robustbench_classifier(name: str, dataset: str, threat: str, mean: list | None = None,
                           std: list | None = None) -> nn.Module:
    """The architecture RobustBench's model zoo builds for ``dataset/threat/name`` (random
    weights; the model takes [0,1] images and normalises inside). Needs ``robustbench``.

    Raises:
        NotAvailableError: robustbench missing. ConfigError: unknown name, or an ensemble.
    """
    entry = _robustbench_entry(_robustbench_zoo(), name, dataset, threat)
    if isinstance(entry.get("gdrive_id"), (list, tuple)):
        raise ConfigError(f"robustbench:{name} is an ensemble of several checkpoints; ebmctl "
                          "imports single models only")
    return Normalized(entry["model"](), mean, std)


def register_import_models(register) -> None:
    """Register the architectures imported artifacts rebuild (called by the core plugin)."""
    from ebmctl.contracts import ModelSpec

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


# --- weights files ---------------------------------------------------------------------

#: the containers checkpoints wrap their state dict in (training scripts' ``{"state_dict": ...,
#: "best_prec1": ...}``, Lightning's ``state_dict``, ``model`` / ``net`` / ``model_state_dict``),
#: tried in order, nested ones too
WRAPPERS = ("state_dict", "model", "model_state_dict", "net")
#: key prefixes that wrappers add to every key: DataParallel / DistributedDataParallel's
#: ``module.`` and ``torch.compile``'s ``_orig_mod.``
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def weights_format(path: str | Path) -> str:
    """What a weights file holds, read from its first bytes (never from its name):
    ``safetensors`` (an 8-byte little-endian header length, then a JSON header), ``zip`` (the
    archive ``torch.save`` writes since PyTorch 1.6) or ``pickle`` (the legacy ``torch.save``
    format, ``_use_new_zipfile_serialization=False``, and files of releases before 1.6).

    Raises:
        InputError: the file is missing or none of the three.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"weights file not found: {p}")
    with p.open("rb") as fh:
        head = fh.read(9)
    size = p.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80":  # the PROTO opcode every pickle of protocol >= 2 starts with
        return "pickle"
    raise InputError(f"{p} is not a weights file PyTorch loads (neither safetensors, a "
                     "torch.save zip archive nor a legacy torch.save pickle)")


def unwrap_state_dict(state: Any, wrappers: tuple[str, ...] = WRAPPERS) -> Any:
    """The state dict inside a checkpoint: the ``wrappers`` containers opened (nested ones
    too), other entries beside them (``best_prec1``, ``optimizer``, ...) dropped, and each of
    :data:`WRAPPER_PREFIXES` removed where every key carries it."""
    opened = True
    while opened and isinstance(state, dict):
        opened = False
        for wrapper in wrappers:
            if isinstance(state.get(wrapper), dict):
                state, opened = state[wrapper], True
                break
    if isinstance(state, dict) and state and all(isinstance(k, str) for k in state):
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if all(k.startswith(prefix) for k in state):
                    state = {k[len(prefix):]: v for k, v in state.items()}
                    stripped = True
    return state


def load_state_dict_file(path: str | Path, wrappers: tuple[str, ...] = WRAPPERS
                         ) -> dict[str, torch.Tensor]:
    """A state dict (name → tensor) from any file ``torch.load`` or safetensors reads,
    recognised by content (:func:`weights_format`), whatever its extension (``.th``, ``.tar``,
    ``.pt``, ...). Torch files are read with ``torch.load(weights_only=True)`` only, so no
    pickled code runs; containers and prefixes are removed by :func:`unwrap_state_dict`.

    Raises:
        InputError: missing file or not a weights file.
        ArtifactError: not a state dict (e.g. a pickled module), or unreadable.
    """
    p = Path(path)
    kind = weights_format(p)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(p))
        except Exception as exc:
            raise ArtifactError(f"{p} is not a readable safetensors file: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:
            raise ArtifactError(f"{p} is not a plain state dict (it holds pickled objects, e.g. "
                                "a whole module); ebmctl reads only state dicts, with "
                                "torch.load(weights_only=True): save model.state_dict() "
                                "instead") from None
    state = unwrap_state_dict(state, wrappers)
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ArtifactError(f"{p} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def _load_strict(net: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``net.load_state_dict(state, strict=True)``: what PyTorch accepts is accepted (e.g. a
    checkpoint of an old release whose BatchNorm layers lack ``num_batches_tracked``, which
    BatchNorm fills in) and what it refuses is refused with its own message, on one line.

    Raises:
        ArtifactError: PyTorch refused the weights.
    """
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        hint = " (check --num-classes)" if "size mismatch" in str(exc) else ""
        raise ArtifactError(f"{what}: the weights do not match the architecture: "
                            f"{' '.join(lines)}{hint}") from None


# --- the import itself -----------------------------------------------------------------

def parse_floats(text: str | None, what: str) -> list[float] | None:
    if text is None or text == "":
        return None
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} expects comma-separated numbers, got {text!r}") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"{what} expects finite numbers, got {text!r}")
    return vals


def parse_source(source: str) -> tuple[str, str]:
    """(scheme, name): ``torchvision``/``timm``/``ebm-defense``/``robustbench`` or
    ``python`` (name = ``path.py:factory``).

    Raises:
        ConfigError: an unrecognised source.
    """
    m = re.fullmatch(r"(torchvision|timm|ebm-defense|robustbench):(.+)", source.strip())
    if m:
        return m.group(1), m.group(2)
    if re.fullmatch(r".+\.py:[A-Za-z_][A-Za-z0-9_]*", source.strip()):
        return "python", source.strip()
    raise ConfigError(f"unknown model source {source!r}: use torchvision:NAME, timm:NAME, "
                      "robustbench:NAME, path/to/module.py:factory, ebm-defense:ebm or "
                      "ebm-defense:wrn")


def import_model(source: str, out: str | Path, *, weights: str | Path | None = None,
                 num_classes: int | None = None, mean: list[float] | None = None,
                 std: list[float] | None = None, image_size: int = 0, channels: int = 3,
                 task: str = "classification", langevin_eps: float = EBM_DEFENSE_EPS,
                 factory_kwargs: dict | None = None,
                 robustbench_dir: str | Path | None = None) -> Path:
    """Convert ``source`` (+ ``weights``) into an ebmctl artifact at ``out``.

    Args:
        source: see the module docstring.
        weights: state dict file; required for ``ebm-defense:*``; without it a torchvision /
            timm / factory model keeps its random initialisation (useful for tests).
        num_classes: output classes (torchvision/timm; default: inferred from ``weights``'
            last layer, else 1000). The authors' WRN infers it from the weights.
        mean, std: per-channel input normalisation the model expects of [0,1] images.
        image_size: the input size the model needs (0 = any; ebmctl resizes to it).
        channels: input channels.
        langevin_eps: ε of the authors' update (``ebm-defense:ebm``); τ = ε, T = ε²/2.
        robustbench_dir: RobustBench model directory (default ``$ROBUSTBENCH_DIR``); the
            ``robustbench:*`` weights are ``<dir>/<dataset>/<threat>/<name>.pt`` unless
            ``weights`` names the file.

    Returns:
        ``out``.

    Raises:
        ConfigError: bad source or options. InputError / ArtifactError: bad weights.
        NotAvailableError: an optional backend (timm, robustbench) is missing.
    """
    from ebmctl.artifacts import file_digest, model_tensors, save_artifact

    scheme, name = parse_source(source)
    if scheme == "robustbench":
        return _import_robustbench(source, name, out, weights, robustbench_dir)
    state = load_state_dict_file(weights) if weights is not None else None
    provenance = {"source": source, "weights": str(weights) if weights else None,
                  "weights_sha256": file_digest(weights) if weights else None}
    if scheme == "ebm-defense":
        if state is None:
            raise ConfigError("ebm-defense:* needs --weights FILE (the state dict the authors "
                              "released)")
        return _import_ebm_defense(name, state, out, provenance, langevin_eps)
    if num_classes is None:
        num_classes = _infer_num_classes(state) or 1000
    norm = {"mean": mean, "std": std}
    if mean is not None and std is not None and len(mean) != len(std):
        raise ConfigError("--mean and --std need the same number of values")
    if scheme == "torchvision":
        arch, args = "torchvision", {"name": name, "num_classes": num_classes}
        net = torchvision_classifier(name, num_classes, mean, std)
    elif scheme == "timm":
        arch, args = "timm", {"name": name, "num_classes": num_classes}
        net = timm_classifier(name, num_classes, mean, std)
    else:
        path, fn = name.rsplit(":", 1)
        arch = "python-factory"
        args = {"path": str(Path(path).resolve()), "factory": fn, "kwargs": factory_kwargs or {}}
        net = python_factory(args["path"], fn, factory_kwargs, mean, std)
    args.update(mean=mean, std=std)
    if state is not None:
        _load_strict(net.net, state, f"{source} with {weights}")
    net.eval()
    data = {"range": "[0,1]", "image_size": int(image_size), "channels": int(channels),
            "normalisation": norm}
    return save_artifact(out, model_tensors(net), kind="classifier", arch=arch, arch_args=args,
                         task=task, data=data, extra={"imported": provenance,
                                                      "normalisation": norm})


def parse_robustbench_name(name: str) -> tuple[str | None, str | None, str]:
    """(dataset, threat, model name) of ``NAME`` or ``DATASET/THREAT/NAME``.

    Raises:
        ConfigError: an unknown dataset or threat model.
    """
    parts = name.split("/")
    if len(parts) == 1:
        return None, None, parts[0]
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"robustbench:{name}: use robustbench:NAME or "
                          "robustbench:DATASET/THREAT/NAME (e.g. cifar10/Linf/Standard)")
    dataset, threat, model = parts
    if dataset not in ROBUSTBENCH_DATASETS:
        raise ConfigError(f"robustbench dataset {dataset!r}: choose from "
                          f"{', '.join(ROBUSTBENCH_DATASETS)}")
    if threat not in ROBUSTBENCH_THREATS:
        raise ConfigError(f"robustbench threat model {threat!r}: choose from "
                          f"{', '.join(ROBUSTBENCH_THREATS)}")
    return dataset, threat, model


def locate_robustbench(name: str, directory: str | Path | None) -> tuple[str, str, str, Path]:
    """(dataset, threat, model name, checkpoint) of ``robustbench:name`` in a local RobustBench
    model directory (``directory``, else ``$ROBUSTBENCH_DIR``), laid out as RobustBench's
    ``load_model`` writes it: ``<dir>/<dataset>/<threat>/<name>.pt``. Nothing is downloaded.

    Raises:
        ConfigError: no directory given, or the bare name sits under several datasets/threats.
        InputError: the directory or the checkpoint is missing.
    """
    import os

    directory = directory or os.environ.get("ROBUSTBENCH_DIR")
    if not directory:
        raise ConfigError("robustbench:<name> reads a local RobustBench model directory "
                          "(ebmctl never downloads): give --robustbench-dir DIR or set "
                          "ROBUSTBENCH_DIR, or name the checkpoint with --weights / @FILE")
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"RobustBench model directory not found: {root}")
    dataset, threat, model = parse_robustbench_name(name)
    if dataset is not None:
        found = [(dataset, threat, root / dataset / threat / f"{model}.pt")]
        found = [f for f in found if f[2].is_file()]
    else:
        found = [(d, t, root / d / t / f"{model}.pt") for d in ROBUSTBENCH_DATASETS
                 for t in ROBUSTBENCH_THREATS if (root / d / t / f"{model}.pt").is_file()]
    if not found:
        where = (root / dataset / threat if dataset else root / "<dataset>" / "<threat>")
        raise InputError(f"no RobustBench checkpoint {where / (model + '.pt')} (RobustBench "
                         "layout <dir>/<dataset>/<threat>/<name>.pt; ebmctl never downloads)")
    if len(found) > 1:
        options = ", ".join(f"robustbench:{d}/{t}/{model}" for d, t, _ in found)
        raise ConfigError(f"robustbench:{model} is in several folders; name one: {options}")
    return found[0][0], found[0][1], model, found[0][2]


def _robustbench_state(path: Path, dataset: str) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict with RobustBench's own key fixes (robustbench.utils
    ``load_model``): the ``last`` / ``state_dict`` wrappers, the ``module.`` and ``model.``
    prefixes dropped, and ImageNet's ``model.`` (its normalising wrapper) put back."""
    state = load_state_dict_file(path, wrappers=("last", "state_dict"))
    for prefix in ("module.", "model."):
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    if dataset == "imagenet":
        state = {f"model.{k}": v for k, v in state.items()}
    return state


def _import_robustbench(source: str, name: str, out, weights, directory) -> Path:
    from ebmctl.artifacts import file_digest, model_tensors, save_artifact

    if weights is not None:
        dataset, threat, model = parse_robustbench_name(name)
        path = Path(weights)
        if not path.is_file():
            raise InputError(f"weights file not found: {path}")
    else:
        dataset, threat, model, path = locate_robustbench(name, directory)
    zoo = _robustbench_zoo()
    if dataset is None:  # a bare name with an explicit file: the zoo says where it belongs
        hits = [(getattr(d, "value", d), getattr(t, "value", t)) for d, threats in zoo.items()
                for t, models in threats.items() if model in models]
        if len(hits) != 1:
            raise ConfigError(f"robustbench:{model} is {'in several' if hits else 'in no'} "
                              "model-zoo folders; name it as robustbench:DATASET/THREAT/NAME")
        dataset, threat = hits[0]
    if dataset not in ROBUSTBENCH_DATASETS:
        raise ConfigError(f"robustbench dataset {dataset!r} is not supported (choose from "
                          f"{', '.join(ROBUSTBENCH_DATASETS)})")
    net = robustbench_classifier(model, dataset, threat)
    state = _robustbench_state(path, dataset)
    # some zoo architectures hold their input normalisation as constructor-set buffers that
    # the released checkpoints lack (robustbench loads those with strict=False); keep them
    constants = {k: v for k, v in net.net.state_dict().items()
                 if k not in state and k.rsplit(".", 1)[-1] in ("mu", "sigma", "mean", "std")
                 and k not in dict(net.net.named_parameters())}
    _load_strict(net.net, {**state, **constants}, f"{source} from {path}")
    net.eval()
    classes, size = ROBUSTBENCH_DATASETS[dataset]
    provenance = {"source": f"robustbench:{dataset}/{threat}/{model}", "weights": str(path),
                  "weights_sha256": file_digest(path)}
    norm = {"mean": None, "std": None, "note": "the RobustBench model normalises inside"}
    return save_artifact(out, model_tensors(net), kind="classifier", arch="robustbench",
                         arch_args={"name": model, "dataset": dataset, "threat": threat},
                         task="classification",
                         data={"range": "[0,1]", "image_size": size, "channels": 3,
                               "num_classes": classes, "normalisation": norm},
                         extra={"imported": provenance, "normalisation": norm})


def _infer_num_classes(state: dict[str, torch.Tensor] | None) -> int | None:
    """Rows of the last 2-d weight (the classifier head) of a state dict."""
    if not state:
        return None
    heads = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(heads[-1].shape[0]) if heads else None


def _import_ebm_defense(name: str, state: dict, out, provenance: dict, eps: float) -> Path:
    from ebmctl.artifacts import model_tensors, save_artifact
    from ebmctl.nn.ebm import LightweightEBM

    if name == "ebm":
        if "f.0.weight" not in state:
            raise ArtifactError("the weights are not the authors' EBM (no 'f.0.weight'; "
                                "expected nets.EBM's state dict)")
        n_f, n_c = int(state["f.0.weight"].shape[0]), int(state["f.0.weight"].shape[1])
        net = LightweightEBM(in_channels=n_c, image_size=32, channels=n_f, leak=0.05)
        converted = {"net." + k[len("f."):]: v for k, v in state.items()}
        _load_strict(net, converted, "ebm-defense:ebm")
        if not eps > 0:
            raise ConfigError("--langevin-eps must be > 0")
        tau, temperature = eps, eps ** 2 / 2  # τ²/(2T) = 1: X − ∇E(X) + εZ
        return save_artifact(
            out, model_tensors(net), kind="ebm", arch="lightweight",
            arch_args={"in_channels": n_c, "image_size": 32, "channels": n_f, "leak": 0.05},
            data={"range": "[-1,1]", "image_size": 32, "channels": n_c},
            extra={"tau": tau, "temperature": temperature, "imported": provenance,
                   "update": f"X <- X - grad E(X) + {eps:g} Z (point0bar1/ebm-defense): "
                             f"tau = eps, temperature = eps^2/2"})
    if name == "wrn":
        if "conv1.weight" not in state or "linear.weight" not in state:
            raise ArtifactError("the weights are not the authors' WideResNet (expected "
                                "nets.WideResNet's state dict: conv1, layer1..3, bn1, linear)")
        n = len({k.split(".")[1] for k in state if k.startswith("layer1.")})
        widen = int(state["layer1.0.conv1.weight"].shape[0]) // 16
        classes = int(state["linear.weight"].shape[0])
        args = {"depth": 6 * n + 4, "widen_factor": widen, "num_classes": classes}
        net = EbmDefenseWRN(**args)
        _load_strict(net, state, "ebm-defense:wrn")
        norm = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
        return save_artifact(out, model_tensors(net.eval()), kind="classifier",
                             arch="ebm-defense-wrn", arch_args=args, task="classification",
                             data={"range": "[-1,1]", "image_size": 32, "channels": 3,
                                   "normalisation": norm},
                             extra={"imported": provenance, "normalisation": norm})
    raise ConfigError(f"unknown ebm-defense model {name!r}: use ebm-defense:ebm or "
                      "ebm-defense:wrn")


def describe(path: str | Path) -> str:
    """One line about an imported artifact's origin (for the command's output)."""
    from ebmctl.artifacts import read_header

    meta, _ = read_header(path)
    extra = json.loads(meta.get("ebmctl.extra", "{}"))
    imp = extra.get("imported", {})
    return (f"{meta.get('ebmctl.kind')} {meta.get('ebmctl.arch')} from {imp.get('source')}"
            + (f" (weights sha256 {imp['weights_sha256'][:12]})" if imp.get("weights_sha256")
               else " (random weights)"))


def resolve_model_argument(value: str | Path, cache_dir: str | Path) -> Path:
    """What ``--model`` / ``--ebm`` accept: an artifact path, or ``SOURCE[@WEIGHTS]`` (e.g.
    ``torchvision:resnet18@rn18.pt``, ``ebm-defense:wrn@clf.pth``, ``robustbench:NAME`` read
    from ``$ROBUSTBENCH_DIR``), imported once into ``cache_dir/imported/`` (keyed by the source
    and the weights' SHA-256) and reused. Every command's ``--model``/``--ebm`` resolves
    through here.

    Raises:
        ConfigError / InputError / ArtifactError: as :func:`import_model`.
    """
    import hashlib

    from ebmctl.artifacts import file_digest

    text = str(value)
    if Path(text).exists():
        return Path(text)
    source, _, weights = text.partition("@")
    try:
        scheme, name = parse_source(source)
    except ConfigError:
        return Path(text)  # not a source: the artifact loader reports the missing file
    if scheme == "robustbench" and not weights:  # from $ROBUSTBENCH_DIR, one cache entry
        dataset, threat, name, located = locate_robustbench(name, None)
        name = f"{dataset}/{threat}/{name}"
        source, weights = f"robustbench:{name}", str(located)
    digest = file_digest(weights) if weights and Path(weights).is_file() else ""
    key = hashlib.sha256(f"{source}|{digest}|{weights if not digest else ''}".encode())
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{scheme}-{name}".rsplit("/", 1)[-1])[:60]
    out = Path(cache_dir) / "imported" / f"{stem}-{key.hexdigest()[:12]}.safetensors"
    if not out.exists():
        import_model(source, out, weights=weights or None)
    return out
