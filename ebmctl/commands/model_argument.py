"""What ``--model`` / ``--ebm`` accept on every command: an artifact path, or a model source
(``SOURCE[@WEIGHTS]``, see :mod:`ebmctl.importers`) imported once into the cache and reused."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ebmctl.errors import ConfigError
from ebmctl.importers import import_model, locate_robustbench, parse_source


def resolve_model_argument(value: str | Path, cache_dir: str | Path) -> Path:
    """What ``--model`` / ``--ebm`` accept: an artifact path, or ``SOURCE[@WEIGHTS]`` (e.g.
    ``torchvision:resnet18@rn18.pt``, ``ebm-defense:wrn@clf.pth``, ``robustbench:NAME`` read
    from ``$ROBUSTBENCH_DIR``), imported once into ``cache_dir/imported/`` (keyed by the source
    and the weights' SHA-256) and reused. Every command's ``--model``/``--ebm`` resolves
    through here.

    Raises:
        ConfigError / InputError / ArtifactError: as :func:`import_model`.
    """
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
