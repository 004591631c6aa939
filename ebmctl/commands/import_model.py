"""`ebmctl import-model SOURCE --out FILE.safetensors`: a classifier or EBM from elsewhere
(torchvision, timm, a local RobustBench model directory, the user's module.py:factory, the
thesis authors' checkpoints) as an ebmctl artifact (see :mod:`ebmctl.importers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import ForceOpt, out_option

app = typer.Typer()


@app.command("import-model")
def import_model_cmd(
    source: str = typer.Argument(..., help="torchvision:NAME | timm:NAME | robustbench:NAME | "
                                 "path/module.py:factory (runs that file's code) | "
                                 "ebm-defense:ebm | ebm-defense:wrn"),
    out: Path = out_option(..., "for the artifact (.safetensors)"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="safetensors or torch.save "
                                           "state dict, recognised by content whatever its "
                                           "extension (read with weights_only=True; a pickled "
                                           "module is refused; state_dict/model/net wrappers and "
                                           "module./_orig_mod. prefixes are removed)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="output classes "
                                              "(default: from the weights, else 1000)"),
    mean: Optional[str] = typer.Option(None, "--mean", help="per-channel input mean of [0,1] "
                                       "images, e.g. 0.4914,0.4822,0.4465"),
    std: Optional[str] = typer.Option(None, "--std", help="per-channel input std"),
    image_size: int = typer.Option(0, "--image-size", help="input size the model needs (0: any)"),
    channels: int = typer.Option(3, "--channels", help="input channels"),
    langevin_eps: float = typer.Option(0.01, "--langevin-eps", help="ebm-defense:ebm: the "
                                       "authors' noise eps (tau = eps, T = eps^2/2)"),
    robustbench_dir: Optional[Path] = typer.Option(None, "--robustbench-dir", help="robustbench:"
                                                   "NAME: local RobustBench model directory "
                                                   "<dir>/<dataset>/<threat>/<name>.pt (default "
                                                   "$ROBUSTBENCH_DIR; never downloads)"),
    force: ForceOpt = False,
):
    """Convert a model from SOURCE into an ebmctl artifact that --model / --ebm accept; the
    artifact records the source, the weights file's SHA-256 and the input normalisation."""
    from ebmctl.artifacts import claim_output
    from ebmctl.console import info
    from ebmctl.errors import ConfigError
    from ebmctl.importers import describe, import_model, parse_floats

    if num_classes is not None and num_classes < 1:
        raise ConfigError("--num-classes must be >= 1")
    if image_size < 0 or channels < 1:
        raise ConfigError("--image-size must be >= 0 and --channels >= 1")
    robustbench = source.strip().startswith("robustbench:")
    if robustbench_dir is not None and not robustbench:
        raise ConfigError("--robustbench-dir applies to robustbench:NAME sources only")
    if robustbench:  # the zoo fixes classes, size and normalisation: a flag would be ignored
        given = [flag for flag, v in (("--num-classes", num_classes), ("--mean", mean),
                                      ("--std", std), ("--image-size", image_size or None),
                                      ("--channels", None if channels == 3 else channels))
                 if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not "
                              "apply to robustbench:NAME (the model zoo fixes classes, input "
                              "size and normalisation)")
    claim_output(out, force=force)
    path = import_model(source, out, weights=weights, num_classes=num_classes,
                        mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"),
                        image_size=image_size, channels=channels, langevin_eps=langevin_eps,
                        robustbench_dir=robustbench_dir)
    info(f"wrote {path}: {describe(path)}")
