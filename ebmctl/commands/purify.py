"""`ebmctl purify`: Langevin purification of image files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import (
    ForceOpt,
    command,
    ebm_option,
    langevin_steps_option,
    make_config,
    out_dir_option,
)

app = typer.Typer()


@app.command("purify", cls=command(aliases={"--steps": "--langevin-steps"}))
def purify_cmd(
    ctx: typer.Context,
    images: list[Path] = typer.Argument(..., help="image files to purify"),
    ebm: Optional[Path] = ebm_option(None, "(default: shipped)"),
    steps: Optional[int] = langevin_steps_option(None, "of the defense, K_def (default: "
                                                 "defense.steps, or the K_def the EBM's "
                                                 "training profile recorded)"),
    replicates: int = typer.Option(1, "--replicates", "-H", min=1, help="purified copies per image"),
    out_dir: Optional[Path] = out_dir_option(None, "(default: next to each input)"),
    fixer: Optional[Path] = typer.Option(None, "--fixer", help="fixer artifact applied after "
                                         "purification (`ebmctl fix train`)"),
    force: ForceOpt = False,
):
    """Run K Langevin steps of an EBM on each image and write <name>.purified.png (with --fixer:
    purified then fixed, <name>.fixed.png; with -H N: <name>.purified-000.png ...).

    Each output has its input's size and mode (gray stays gray, RGB stays RGB, an alpha channel
    is kept, 16-bit gray stays 16-bit; palette, bilevel and CMYK inputs come back as RGB or
    gray). An image of another size than the EBM's is resized to the EBM's size, purified there
    and resized back, exactly as the defense in `ebmctl attack` sees it: the EBM always works
    at the size it was trained for, so a large photo comes back at the EBM's level of detail.
    Inputs with the same name get -2, -3, ... in one call; an existing output is replaced only
    with --force."""
    from ebmctl.artifacts import claim_output, output_stems
    from ebmctl.console import info
    from ebmctl.context import setup_device
    from ebmctl.models import EnergyModel
    from ebmctl.device import resolve_precision
    from ebmctl.errors import ConfigError, InputError
    from ebmctl.images import output_mode, read_image_like, save_image_like
    from ebmctl.shipped import default_ebm

    cfg = make_config(ctx)
    if steps is not None and steps < 0:
        raise ConfigError("--langevin-steps must be >= 0")
    if not images:
        raise InputError("no images given")
    dev = setup_device(cfg)
    if ebm is not None:  # ebm-defense:ebm@FILE as `ebmctl import-model` takes
        from ebmctl.importers import resolve_model_argument

        ebm = resolve_model_argument(ebm, cfg["run.out_dir"])
    energy = EnergyModel.load(ebm or default_ebm(), dev)
    k = cfg["defense.steps"] if steps is None else steps
    if steps is None and cfg.provenance.get("defense.steps") == "default":
        recorded = energy.recorded_defense_steps()
        k = k if recorded is None else recorded
    fixer_net = None
    if fixer is not None:
        from ebmctl.models import load_fixer

        fixer_net = load_fixer(fixer, dev)
    # Read everything and claim every output first, so that a bad file or an existing output
    # fails before any work is done or anything is written.
    loaded = [(p, *read_image_like(p)) for p in images]
    folders = [Path(out_dir or p.parent) for p in images]
    stems = output_stems([(f, p.stem) for f, p in zip(folders, images)])
    kind = ".fixed" if fixer_net is not None else ".purified"
    targets = [[claim_output(f / (s + (f"{kind}.png" if replicates == 1 else
                                       f"{kind}-{r:03d}.png")), force=force, option="--out-dir")
                for r in range(replicates)] for f, s in zip(folders, stems)]
    info(f"purifying with K = {k} Langevin steps of {energy.path}")
    precision = resolve_precision(cfg["langevin.precision"], dev)
    size = energy.image_size
    for i, ((path, img, meta), outs) in enumerate(zip(loaded, targets)):
        w, h = meta.size
        if (h, w) != (size, size):
            info(f"note: {path.name} is {w}x{h}; purified at the EBM's {size}x{size} and "
                 f"resized back to {w}x{h}")
        if img.shape[0] != energy.channels:
            ebm_mode = "L" if energy.channels == 1 else "RGB"
            info(f"note: {path.name}: {meta.mode} image converted to {ebm_mode} for the EBM and "
                 f"back to {output_mode(meta)}")
        x = img.unsqueeze(0).to(dev).repeat(replicates, 1, 1, 1)
        out = energy.purify01(x, k, (cfg["run.seed"], "purify", str(path), i), precision=precision,
                              chunk_size=cfg["langevin.chunk_size"], clamp=cfg["defense.clamp"])
        if fixer_net is not None:  # after resizing back, as in the defense
            from ebmctl.models import fix_images

            out = fix_images(fixer_net, out)
        mode = output_mode(meta)
        for r, target in enumerate(outs):
            save_image_like(out[r], target, meta)
            changed = "" if mode == meta.mode else f" (a {meta.mode} input, written as {mode})"
            info(f"wrote {target} from {path}{changed}")
