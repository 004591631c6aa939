"""`ebmctl purify`: purification of image files (the EBM's Langevin purification by default,
or any registered purifier with --purifier)."""

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
    ebm: Optional[Path] = ebm_option(None, "(default: shipped; also a shipped name, cifar10)"),
    purifier: Optional[str] = typer.Option(None, "--purifier", help="purifier: "
                                           "NAME[:key=value,...], e.g. jpeg:quality=75 or "
                                           "bit-depth:bits=3 (see `ebmctl plugins`; default: "
                                           "defense.purifier, else the EBM's, 'ebm')"),
    steps: Optional[int] = langevin_steps_option(None, "of the defense, K_def (default: "
                                                 "defense.steps, or the K_def the EBM's "
                                                 "training profile recorded)"),
    replicates: int = typer.Option(1, "--replicates", "-H", min=1, help="purified copies per image"),
    out_dir: Optional[Path] = out_dir_option(None, "(default: next to each input)"),
    fixer: Optional[Path] = typer.Option(None, "--fixer", help="fixer artifact applied after "
                                         "purification (`ebmctl fix train`)"),
    force: ForceOpt = False,
):
    """Run K Langevin steps of an EBM (or the purifier --purifier names) on each image and
    write <name>.purified.png (with --fixer: purified then fixed, <name>.fixed.png; with -H N:
    <name>.purified-000.png ...).

    Each output has its input's size and mode (gray stays gray, RGB stays RGB, an alpha channel
    is kept, 16-bit gray stays 16-bit; palette, bilevel and CMYK inputs come back as RGB or
    gray). An image of another size than the EBM's is resized to the EBM's size, purified there
    and resized back, exactly as the defense in `ebmctl attack` sees it: the EBM always works
    at the size it was trained for, so a large photo comes back at the EBM's level of detail.
    Inputs with the same name get -2, -3, ... in one call; an existing output is replaced only
    with --force."""
    from ebmctl.console import info
    from ebmctl.context import setup_device
    from ebmctl.errors import ConfigError, InputError

    cfg = make_config(ctx)
    if steps is not None and steps < 0:
        raise ConfigError("--langevin-steps must be >= 0")
    if not images:
        raise InputError("no images given")
    dev = setup_device(cfg)
    chosen, energy = _purifier(cfg, purifier, ebm, steps, dev)
    fixer_net = None
    if fixer is not None:
        from ebmctl.models import load_fixer

        fixer_net = load_fixer(fixer, dev)
    # Read everything and claim every output first, so that a bad file or an existing output
    # fails before any work is done or anything is written.
    loaded, targets = _claim_outputs(images, out_dir, replicates,
                                     ".fixed" if fixer_net is not None else ".purified", force)
    if energy is not None:
        info(f"purifying with K = {chosen.steps} Langevin steps of {energy.path}")
    else:
        info(f"purifying with {chosen.describe()}")
    for i, ((path, img, meta), outs) in enumerate(zip(loaded, targets)):
        if energy is not None:
            _note_conversions(path, img, meta, energy)
        out = _purify_copies(cfg, chosen, fixer_net, img, len(outs), (str(path), i), dev)
        _save_copies(out, outs, path, meta)


def _purifier(cfg, spec: Optional[str], ebm: Optional[Path], steps: Optional[int], dev):
    """The purifier ``--purifier`` (else ``defense.purifier``, else ``ebm``) names, and the
    EBM it runs (None for another purifier): ``--ebm`` (a file, a shipped name or
    ebm-defense:ebm@FILE; default the shipped EBM) and ``--langevin-steps`` belong to ``ebm``.

    Raises:
        ConfigError: --ebm or --langevin-steps with another purifier; an unknown purifier or
            setting.
    """
    from ebmctl.context import RunConfig
    from ebmctl.defense import DefenseConfig, PurifierContext
    from ebmctl.errors import ConfigError
    from ebmctl.models import EnergyModel
    from ebmctl.plugins import get_registries
    from ebmctl.purifiers import build_purifier, parse_purifier_spec
    from ebmctl.sampling.langevin import LangevinConfig
    from ebmctl.shipped import default_ebm, ebm_path

    spec = (spec or cfg.section(DefenseConfig).purifier or "ebm").strip()
    name = parse_purifier_spec(spec)[0]
    energy = None
    if name == "ebm":
        if ebm is not None:  # ebm-defense:ebm@FILE as `ebmctl import-model` takes
            from ebmctl.commands.model_argument import resolve_model_argument

            ebm = resolve_model_argument(ebm_path(ebm), cfg.section(RunConfig).out_dir)
        energy = EnergyModel.load(ebm or default_ebm(), dev)
    elif ebm is not None or steps is not None:
        raise ConfigError(f"--ebm and --langevin-steps belong to the EBM's purifier, not to "
                          f"--purifier {name}")
    context = PurifierContext(device=dev, ebm=energy, defense=cfg.section(DefenseConfig),
                              langevin=cfg.section(LangevinConfig),
                              steps_chosen=not cfg.is_default("defense.steps"))
    chosen = build_purifier(spec, get_registries().purifiers, context,
                            {"steps": steps} if steps is not None else None)
    return chosen, energy


def _claim_outputs(images: list[Path], out_dir: Optional[Path], replicates: int, kind: str,
                   force: bool) -> tuple[list[tuple], list[list[Path]]]:
    """Every input read (path, [C,H,W] image in [0,1], metadata) and its outputs claimed:
    ``<name><kind>.png``, or ``<name><kind>-000.png`` ... with replicates; same-named inputs
    get -2, -3, ..."""
    from ebmctl.artifacts import claim_output, output_stems
    from ebmctl.images import read_image_like

    loaded = [(p, *read_image_like(p)) for p in images]
    folders = [Path(out_dir or p.parent) for p in images]
    stems = output_stems([(f, p.stem) for f, p in zip(folders, images)])
    targets = [[claim_output(f / (s + (f"{kind}.png" if replicates == 1 else
                                       f"{kind}-{r:03d}.png")), force=force, option="--out-dir")
                for r in range(replicates)] for f, s in zip(folders, stems)]
    return loaded, targets


def _note_conversions(path: Path, img, meta, energy) -> None:
    """Say when an image is purified at another size or in another mode than its own."""
    from ebmctl.console import info
    from ebmctl.images import output_mode

    w, h = meta.size
    size = energy.image_size
    if (h, w) != (size, size):
        info(f"note: {path.name} is {w}x{h}; purified at the EBM's {size}x{size} and "
             f"resized back to {w}x{h}")
    if img.shape[0] != energy.channels:
        ebm_mode = "L" if energy.channels == 1 else "RGB"
        info(f"note: {path.name}: {meta.mode} image converted to {ebm_mode} for the EBM and "
             f"back to {output_mode(meta)}")


def _purify_copies(cfg, purifier, fixer_net, img, copies: int, key: tuple, dev):
    """``copies`` purified (then fixed) copies of ``img`` ([C,H,W] in [0,1]) at its own size,
    keyed by (run.seed, "purify", *key): [copies, C, H, W] in [0,1]."""
    import torch

    from ebmctl.context import RunConfig

    x = img.unsqueeze(0).to(dev).repeat(copies, 1, 1, 1)
    with torch.no_grad():
        out = purifier.purify(x, (cfg.section(RunConfig).seed, "purify", *key))
    if fixer_net is not None:  # after resizing back, as in the defense
        from ebmctl.models import fix_images

        out = fix_images(fixer_net, out)
    return out


def _save_copies(out, targets: list[Path], path: Path, meta) -> None:
    """Write each copy in its input's size and mode."""
    from ebmctl.console import info
    from ebmctl.images import output_mode, save_image_like

    mode = output_mode(meta)
    for r, target in enumerate(targets):
        save_image_like(out[r], target, meta)
        changed = "" if mode == meta.mode else f" (a {meta.mode} input, written as {mode})"
        info(f"wrote {target} from {path}{changed}")
