"""Weights files: what a file holds (read from its content, never its name), the state dict
inside a checkpoint, and the strict load into an architecture.

Torch files are read with ``torch.load(weights_only=True)`` only, the one pickle path in
ebmctl: a pickled module (or anything but tensors) is refused, so no pickled code runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ebmctl.errors import ArtifactError, InputError

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


def load_strict(net: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
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


def infer_num_classes(state: dict[str, torch.Tensor] | None) -> int | None:
    """Rows of the last 2-d weight (the classifier head) of a state dict; None without one."""
    if not state:
        return None
    heads = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(heads[-1].shape[0]) if heads else None
