"""`ebmctl purify`: Langevin purification of image files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import DeviceOpt, ProfileOpt, SeedOpt, SetOpt, make_config


def purify_cmd(
    images: list[Path] = typer.Argument(..., help="image files to purify"),
    ebm: Optional[Path] = typer.Option(None, "--ebm", help="EBM artifact (default: shipped)"),
    steps: Optional[int] = typer.Option(None, "--steps", "-k", help="K_def (defense.steps)"),
    replicates: int = typer.Option(1, "--replicates", "-H", min=1, help="purified copies per image"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="folder for outputs "
                                           "(default: next to each input)"),
    fixer: Optional[Path] = typer.Option(None, "--fixer", help="fixer artifact applied after "
                                         "purification (`ebmctl fix train`)"),
    profile: ProfileOpt = None, set_: SetOpt = None, device: DeviceOpt = None, seed: SeedOpt = None,
):
    """Run K Langevin steps of an EBM on each image and write purified PNGs (with --fixer:
    purified then fixed, written as <name>.fixed.png)."""
    from ebmctl.console import info
    from ebmctl.context import setup_device
    from ebmctl.defense import EnergyModel
    from ebmctl.device import resolve_precision
    from ebmctl.errors import ConfigError, InputError
    from ebmctl.evaluate.plots import save_image01
    from ebmctl.images import read_image01
    from ebmctl.shipped import default_ebm

    cfg = make_config(profile, set_, device, seed)
    if steps is not None and steps < 0:
        raise ConfigError("--steps must be >= 0")
    dev = setup_device(cfg)
    energy = EnergyModel.load(ebm or default_ebm(), dev)
    k = cfg["defense.steps"] if steps is None else steps
    if steps is None and cfg.provenance.get("defense.steps") == "default":
        # An EBM is only trained to stay realistic for its own horizon: use the K_def its
        # training profile recorded rather than the thesis default of 1500.
        from ebmctl.artifacts import load_artifact

        recorded = load_artifact(energy.path, "ebm").config.get("defense", {}).get("steps")
        if isinstance(recorded, int) and recorded >= 0:
            k = recorded
    info(f"purifying with K = {k} Langevin steps of {energy.path}")
    fixer_net = None
    if fixer is not None:
        from ebmctl.fixing import load_fixer

        fixer_net = load_fixer(fixer, dev)
    # Read everything first so that a bad file fails before any output is written.
    loaded = [(p, read_image01(p, energy.channels)) for p in images]
    precision = resolve_precision(cfg["langevin.precision"], dev)
    for i, (path, img) in enumerate(loaded):
        h, w = img.shape[-2:]
        size = 0
        if min(h, w) < energy.image_size:
            info(f"note: {path.name} is {w}x{h}, smaller than the EBM's {energy.image_size}x"
                 f"{energy.image_size}; resized for purification")
            size = energy.image_size
        elif (h, w) != (energy.image_size, energy.image_size):
            info(f"note: {path.name} is {w}x{h}; the EBM ({energy.image_size}x"
                 f"{energy.image_size}) runs convolutionally over it (energy summed over the map)")
        x = img.unsqueeze(0).to(dev).repeat(replicates, 1, 1, 1)
        if size:
            from ebmctl.defense import adapt_images

            x = adapt_images(x, size, 0)
        out = energy.purify01(x, k, (cfg["run.seed"], "purify", str(path), i), precision=precision,
                              chunk_size=cfg["langevin.chunk_size"], clamp=cfg["defense.clamp"],
                              native=True)
        if fixer_net is not None:
            from ebmctl.fixing import fix_images

            out = fix_images(fixer_net, out)
        folder = out_dir or path.parent
        for r in range(replicates):
            stem = ".fixed" if fixer_net is not None else ".purified"
            suffix = f"{stem}.png" if replicates == 1 else f"{stem}-{r:03d}.png"
            target = Path(folder) / (path.stem + suffix)
            save_image01(out[r], target)
            info(f"wrote {target}")
    if not loaded:
        raise InputError("no images given")
