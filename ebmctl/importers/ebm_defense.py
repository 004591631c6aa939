"""The ``ebm-defense:ebm`` / ``ebm-defense:wrn`` source: the EBM and WideResNet state dicts
released with the thesis authors' PyTorch code (point0bar1/ebm-defense, ``nets.py``), converted.

Their EBM maps onto ebmctl's ``lightweight`` EBM; their update ``X ← X − ∇E(X) + εZ``
(ε = 0.01, pixels in [-1,1]) is ebmctl's ``X − (τ²/2T)·∇U + τZ`` with τ = ε and T = ε²/2.
Their WRN (biased convolutions, shortcut on the raw input) is the ``ebm-defense-wrn``
architecture (:mod:`ebmctl.nn.ebm_defense_wrn`).
"""

from __future__ import annotations

from pathlib import Path

from ebmctl.errors import ArtifactError, ConfigError
from ebmctl.importers.request import EBM_DEFENSE_EPS, ImportRequest
from ebmctl.importers.state_dict import load_state_dict_file, load_strict
from ebmctl.nn.ebm_defense_wrn import EbmDefenseWRN

__all__ = ["EBM_DEFENSE_EPS", "convert_ebm_defense", "import_ebm_defense"]


def import_ebm_defense(name: str, out: str | Path, request: ImportRequest) -> Path:
    """``ebm-defense:<name>`` with ``request.weights`` (required) as an artifact at ``out``.

    Raises:
        ConfigError: no weights, or an unknown name. InputError / ArtifactError: bad weights.
    """
    weights = request.weights
    state = load_state_dict_file(weights) if weights is not None else None
    provenance = request.provenance()
    if state is None:
        raise ConfigError("ebm-defense:* needs --weights FILE (the state dict the authors "
                          "released)")
    return convert_ebm_defense(name, state, out, provenance, request.langevin_eps)


def convert_ebm_defense(name: str, state: dict, out: str | Path, provenance: dict,
                        eps: float = EBM_DEFENSE_EPS) -> Path:
    """The authors' state dict ``state`` of model ``name`` (``ebm`` or ``wrn``) as an ebmctl
    artifact at ``out``; ``eps`` is their Langevin noise ε (``ebm`` only).

    Raises:
        ArtifactError: the state dict is not the named model's. ConfigError: unknown name, ε ≤ 0.
    """
    from ebmctl.artifacts import model_tensors, save_artifact
    from ebmctl.nn.ebm import LightweightEBM

    if name == "ebm":
        if "f.0.weight" not in state:
            raise ArtifactError("the weights are not the authors' EBM (no 'f.0.weight'; "
                                "expected nets.EBM's state dict)")
        n_f, n_c = int(state["f.0.weight"].shape[0]), int(state["f.0.weight"].shape[1])
        net = LightweightEBM(in_channels=n_c, image_size=32, channels=n_f, leak=0.05)
        converted = {"net." + k[len("f."):]: v for k, v in state.items()}
        load_strict(net, converted, "ebm-defense:ebm")
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
        load_strict(net, state, "ebm-defense:wrn")
        norm = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
        return save_artifact(out, model_tensors(net.eval()), kind="classifier",
                             arch="ebm-defense-wrn", arch_args=args, task="classification",
                             data={"range": "[-1,1]", "image_size": 32, "channels": 3,
                                   "normalisation": norm},
                             extra={"imported": provenance, "normalisation": norm})
    raise ConfigError(f"unknown ebm-defense model {name!r}: use ebm-defense:ebm or "
                      "ebm-defense:wrn")
