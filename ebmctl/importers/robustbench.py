"""The ``robustbench:<name>`` (or ``robustbench:<dataset>/<threat>/<name>``) source: a RobustBench
model from a *local* model directory in RobustBench's layout ``<dir>/<dataset>/<threat>/<name>.pt``
(``--robustbench-dir`` or ``$ROBUSTBENCH_DIR``; never downloaded), its architecture from
``robustbench.model_zoo`` (the optional ``robustbench`` extra)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ebmctl.errors import ConfigError, InputError, NotAvailableError
from ebmctl.importers.classifier import Normalized
from ebmctl.importers.request import ImportRequest
from ebmctl.importers.state_dict import load_state_dict_file, load_strict

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


def import_robustbench(name: str, out: str | Path, request: ImportRequest) -> Path:
    """``robustbench:<name>`` as a ``robustbench`` classifier artifact at ``out``: the
    checkpoint is ``request.weights`` if given, else found by :func:`locate_robustbench` in
    ``request.robustbench_dir``; the zoo's architecture is rebuilt and loaded strictly.

    Raises:
        ConfigError: an unknown, ambiguous or unsupported model. InputError / ArtifactError:
            a missing or bad checkpoint. NotAvailableError: robustbench is not installed.
    """
    from ebmctl.artifacts import file_digest, model_tensors, save_artifact

    source, weights = request.source, request.weights
    if weights is not None:
        dataset, threat, model = parse_robustbench_name(name)
        path = Path(weights)
        if not path.is_file():
            raise InputError(f"weights file not found: {path}")
    else:
        dataset, threat, model, path = locate_robustbench(name, request.robustbench_dir)
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
    load_strict(net.net, {**state, **constants}, f"{source} from {path}")
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
