"""Options shared by every command and the config they resolve to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ebmctl.profiles import Config, resolve

ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p",
                                                    help="profile name or path to a .toml file")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s",
                                                     help="override a profile key: section.key=value")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda[:N]")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="run seed (run.seed)")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="output file")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace existing outputs (without it, "
                                                       "a command refuses to overwrite earlier "
                                                       "work)")]

GLOBAL: dict = {"profile": None, "set": [], "device": None, "seed": None, "debug": False}


def make_config(profile: str | None, sets: list[str] | None, device: str | None = None,
                seed: int | None = None) -> Config:
    items = list(GLOBAL["set"] or []) + list(sets or [])
    dev = device or GLOBAL["device"]
    sd = seed if seed is not None else GLOBAL["seed"]
    if dev:
        items.append(f"run.device={dev}")
    if sd is not None:
        items.append(f"run.seed={sd}")
    from ebmctl.context import with_task_defaults

    return with_task_defaults(resolve(profile or GLOBAL["profile"], items))
