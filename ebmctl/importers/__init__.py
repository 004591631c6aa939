"""Model import: classifiers and EBMs from elsewhere as ebmctl artifacts (``ebmctl import-model``).

Sources (``SOURCE`` of ``ebmctl import-model``), one adapter module each, found in
:data:`SOURCES` by the source's scheme:

* ``torchvision:<name>`` (:mod:`~ebmctl.importers.torchvision`): a torchvision architecture
  built with ``weights=None`` (never a download), its weights from ``--weights FILE``;
  ``timm:<name>`` (:mod:`~ebmctl.importers.timm`) likewise (timm optional);
* ``robustbench:<name>`` (or ``robustbench:<dataset>/<threat>/<name>``;
  :mod:`~ebmctl.importers.robustbench`): a RobustBench model from a *local* model directory in
  RobustBench's layout ``<dir>/<dataset>/<threat>/<name>.pt`` (``--robustbench-dir`` or
  ``$ROBUSTBENCH_DIR``; never downloaded), its architecture from ``robustbench.model_zoo`` (the
  optional ``robustbench`` extra);
* ``path/to/module.py:factory`` (:mod:`~ebmctl.importers.python_factory`): the user's own
  architecture, ``factory(**kwargs)`` returning an ``nn.Module``. This runs that file's code,
  now and every time the artifact is loaded;
* ``ebm-defense:ebm`` / ``ebm-defense:wrn`` (:mod:`~ebmctl.importers.ebm_defense`): the EBM and
  WideResNet state dicts released with the thesis authors' PyTorch code
  (point0bar1/ebm-defense, ``nets.py``). Their EBM maps onto ebmctl's ``lightweight`` EBM;
  their update ``X ← X − ∇E(X) + εZ`` (ε = 0.01, pixels in [-1,1]) is ebmctl's
  ``X − (τ²/2T)·∇U + τZ`` with τ = ε and T = ε²/2. Their WRN (biased convolutions, shortcut on
  the raw input) is the ``ebm-defense-wrn`` architecture (:mod:`ebmctl.nn.ebm_defense_wrn`).

Weights files (:mod:`~ebmctl.importers.state_dict`) are recognised by content, not by name:
safetensors, or a *state dict* saved by ``torch.save`` (zip archive or legacy pickle, any
extension) read with ``torch.load(weights_only=True)``; a pickled module (or anything but
tensors) is refused. Checkpoint containers (``state_dict``, ``model``, ``net``) and the
``module.`` / ``_orig_mod.`` prefixes are removed, and the weights go through
``load_state_dict(strict=True)``. The artifact records the source, the weights file's SHA-256
and the input normalisation.

Adding a source: write its adapter module with an ``import_<scheme>(name, out, request)``
function, add it to :data:`SOURCES` and to :func:`parse_source`, and register the architecture
its artifacts rebuild in ``ebmctl.builtin``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

from ebmctl.errors import ConfigError
from ebmctl.importers.classifier import Normalized
from ebmctl.importers.ebm_defense import import_ebm_defense
from ebmctl.importers.python_factory import import_python_factory, python_factory
from ebmctl.importers.request import EBM_DEFENSE_EPS, ImportRequest
from ebmctl.importers.robustbench import (
    ROBUSTBENCH_DATASETS,
    ROBUSTBENCH_THREATS,
    import_robustbench,
    locate_robustbench,
    parse_robustbench_name,
    robustbench_classifier,
)
from ebmctl.importers.state_dict import (
    WRAPPER_PREFIXES,
    WRAPPERS,
    load_state_dict_file,
    unwrap_state_dict,
    weights_format,
)
from ebmctl.importers.timm import import_timm, timm_classifier
from ebmctl.importers.torchvision import import_torchvision, torchvision_classifier
from ebmctl.nn.ebm_defense_wrn import EbmDefenseWRN, ebm_defense_wrn

__all__ = [
    "EBM_DEFENSE_EPS", "ROBUSTBENCH_DATASETS", "ROBUSTBENCH_THREATS", "SOURCES", "WRAPPERS",
    "WRAPPER_PREFIXES", "EbmDefenseWRN", "ImportRequest", "Normalized", "describe",
    "ebm_defense_wrn", "import_model", "load_state_dict_file", "locate_robustbench",
    "parse_floats", "parse_robustbench_name", "parse_source", "python_factory",
    "robustbench_classifier", "timm_classifier", "torchvision_classifier", "unwrap_state_dict",
    "weights_format",
]

#: scheme (as :func:`parse_source` names it) → the adapter that imports ``name`` to ``out``
SOURCES: dict[str, Callable[[str, str | Path, ImportRequest], Path]] = {
    "torchvision": import_torchvision,
    "timm": import_timm,
    "robustbench": import_robustbench,
    "ebm-defense": import_ebm_defense,
    "python": import_python_factory,
}


def parse_floats(text: str | None, what: str) -> list[float] | None:
    """``"0.5,0.5,0.5"`` → ``[0.5, 0.5, 0.5]``; None for an empty or missing value.

    Raises:
        ConfigError: a value that is not a finite number (``what`` names the option).
    """
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
    scheme, name = parse_source(source)
    request = ImportRequest(source, weights, num_classes, mean, std, image_size, channels, task,
                            langevin_eps, factory_kwargs, robustbench_dir)
    return SOURCES[scheme](name, out, request)


def describe(path: str | Path) -> str:
    """One line about an imported artifact's origin (for the command's output)."""
    from ebmctl.artifacts import read_header

    meta, _ = read_header(path)
    extra = json.loads(meta.get("ebmctl.extra", "{}"))
    imp = extra.get("imported", {})
    return (f"{meta.get('ebmctl.kind')} {meta.get('ebmctl.arch')} from {imp.get('source')}"
            + (f" (weights sha256 {imp['weights_sha256'][:12]})" if imp.get("weights_sha256")
               else " (random weights)"))
