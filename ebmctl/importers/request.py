"""What one ``ebmctl import-model`` call asks for, handed to every source adapter alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: the authors' Langevin noise ε (config_attack/bpda_eot_attack.json: langevin_eps)
EBM_DEFENSE_EPS = 0.01


@dataclass(frozen=True)
class ImportRequest:
    """The options of :func:`ebmctl.importers.import_model` (see there for each), beside the
    source's scheme and name, which pick the adapter."""

    source: str
    weights: str | Path | None = None
    num_classes: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    image_size: int = 0
    channels: int = 3
    task: str = "classification"
    langevin_eps: float = EBM_DEFENSE_EPS
    factory_kwargs: dict | None = None
    robustbench_dir: str | Path | None = None

    def provenance(self) -> dict:
        """The artifact's ``imported`` record: the source, the weights file and its SHA-256."""
        from ebmctl.artifacts import file_digest

        return {"source": self.source, "weights": str(self.weights) if self.weights else None,
                "weights_sha256": file_digest(self.weights) if self.weights else None}
