"""What every command shares: the global options' one declaration, the flags that mean the same
thing in every command, and the one mapping from flags to profile overrides.

Global options (``--profile``, ``--set``, ``--device``, ``--seed``, ``--debug``) are declared
once, on the root callback in :mod:`ebmctl.cli`, which stores them in the click context object
(:class:`GlobalOptions`). A command built with :func:`command` also accepts them after its
name (``ebmctl attack --profile quick``), from the same declarations; those values take
precedence for that command. Commands read them only through :func:`make_config`.
"""

from __future__ import annotations

import sys
import functools
from dataclasses import dataclass, replace
from typing import Annotated, Any, Mapping, Optional

import typer
from typer.core import TyperCommand, TyperOption

from ebmctl.config import Config
from ebmctl.profiles import resolve

ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p",
                                                    help="profile name or path to a .toml file")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s",
                                                     help="override a profile key: section.key=value")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda[:N]")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="run seed (run.seed)")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace existing outputs (without it, "
                                                       "a command refuses to overwrite earlier "
                                                       "work)")]

#: The one meaning of each shared flag: its help starts with this text in every command
#: (tests/test_cli_vocabulary.py holds every command to it).
MEANINGS = {
    "--ebm": "EBM or Hat EBM artifact",
    "--model": "task model artifact",
    "--out": "output file",
    "--out-dir": "output folder",
    "--n-images": "number of images",
    "--langevin-steps": "Langevin steps K",
    "--updates": "training updates",
}


def _help(flag: str, detail: str) -> str:
    return MEANINGS[flag] + (f" {detail}" if detail else "")


def ebm_option(default: Any = None, detail: str = "") -> Any:
    """``--ebm FILE``: an EBM or Hat EBM artifact, in every command that takes one."""
    return typer.Option(default, "--ebm", help=_help("--ebm", detail))


def model_option(default: Any = None, detail: str = "") -> Any:
    """``-m/--model FILE``: the task model (classifier, segmenter), in every command."""
    return typer.Option(default, "--model", "-m", help=_help("--model", detail))


def out_option(default: Any = None, detail: str = "") -> Any:
    """``-o/--out FILE``: always a file (a folder is ``--out-dir``)."""
    return typer.Option(default, "--out", "-o", help=_help("--out", detail))


def out_dir_option(default: Any = None, detail: str = "") -> Any:
    """``--out-dir DIR``: always a folder."""
    return typer.Option(default, "--out-dir", help=_help("--out-dir", detail))


def n_images_option(default: Any = None, detail: str = "") -> Any:
    """``--n-images N``: how many images a command takes or makes."""
    return typer.Option(default, "--n-images", help=_help("--n-images", detail))


def langevin_steps_option(default: Any = None, detail: str = "") -> Any:
    """``-k/--langevin-steps K``: Langevin steps of the sampler (never training updates)."""
    return typer.Option(default, "--langevin-steps", "-k", help=_help("--langevin-steps", detail))


def updates_option(default: Any = None, detail: str = "") -> Any:
    """``--updates N``: parameter updates of a training run (never Langevin steps)."""
    return typer.Option(default, "--updates", help=_help("--updates", detail))


@dataclass(frozen=True)
class GlobalOptions:
    """The global options of one invocation, kept in the click context object.

    ``sets`` lists the ``--set`` items in the order given (root first, then the command's);
    a later item for the same key wins."""

    profile: str | None = None
    sets: tuple[str, ...] = ()
    device: str | None = None
    seed: int | None = None
    debug: bool = False

    def then(self, profile: str | None = None, sets: Any = None, device: str | None = None,
             seed: int | None = None) -> "GlobalOptions":
        """These options with a command's own global options on top."""
        return replace(self, profile=profile or self.profile, sets=(*self.sets, *(sets or ())),
                       device=device or self.device, seed=self.seed if seed is None else seed)


#: Names of the global options a command can take after its own name.
CONFIG_OPTIONS = ("profile", "set_", "device", "seed")


@functools.lru_cache(maxsize=None)
def _global_params() -> dict[str, Any]:
    """The click parameters of the global options, built by typer from the declarations above
    (so root and command options cannot drift apart)."""
    scratch = typer.Typer()

    @scratch.command()
    def _options(profile: ProfileOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
                 seed: SeedOpt = None) -> None:  # pragma: no cover - never invoked
        pass

    return {p.name: p for p in typer.main.get_command(scratch).params}


class Command(TyperCommand):
    """A command that also takes the global options after its name (``takes``), and old flag
    spellings kept for one release (``aliases``: old name -> new name; hidden from --help,
    rewritten before parsing with a one-line note on stderr)."""

    takes: tuple[str, ...] = CONFIG_OPTIONS
    aliases: Mapping[str, str] = {}

    def __init__(self, *args: Any, params: list | None = None, **kwargs: Any) -> None:
        shared = _global_params()
        super().__init__(*args, params=[*(params or []), *(shared[n] for n in self.takes)],
                         **kwargs)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _new_spellings(self, ctx, args))

    def invoke(self, ctx: Any) -> Any:
        mine = {n: ctx.params.pop(n, None) for n in self.takes}
        parent = ctx.find_object(GlobalOptions) or GlobalOptions()
        ctx.obj = parent.then(mine.get("profile"), mine.get("set_"), mine.get("device"),
                              mine.get("seed"))
        return super().invoke(ctx)


def command(*, takes: tuple[str, ...] = CONFIG_OPTIONS,
            aliases: Mapping[str, str] | None = None) -> type[Command]:
    """The command class for ``@app.command(cls=command(...))``: ``takes`` names the global
    options the command accepts after its name (none for a command that reads no profile),
    ``aliases`` maps deprecated flag spellings to the current ones."""
    return type("Command", (Command,), {"takes": tuple(takes), "aliases": dict(aliases or {})})


def _new_spellings(cmd: Command, ctx: Any, args: list[str]) -> list[str]:
    """``args`` with each deprecated spelling in ``cmd.aliases`` replaced by the current one
    (``--old V``, ``--old=V``, ``-x V`` and ``-xV``); option values and anything after ``--``
    are left alone."""
    if not cmd.aliases:
        return args
    valued = {o for p in cmd.params if isinstance(p, TyperOption) and not p.is_flag
              and not p.count for o in p.opts}
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            out += [a, *args[i:]]
            break
        if a.startswith("--"):
            name, sep, value = a.partition("=")
        elif a.startswith("-") and len(a) > 2:  # -xVALUE
            name, sep, value = a[:2], "=", a[2:]
        else:
            name, sep, value = a, "", ""
        new = cmd.aliases.get(name)
        if new is None:
            out.append(a)
        else:
            print(f"note: `{ctx.command_path} {name}` is deprecated; use {new}", file=sys.stderr,
                  flush=True)
            out += [new, value] if sep else [new]
            name = new
        if not sep and name in valued and i < len(args):  # its value, whatever it looks like
            out.append(args[i])
            i += 1
    return out


def given(flags: Mapping[str, Any] | None) -> dict[str, Any]:
    """The flags a command was given: ``{"attack.norm": norm, ...}`` without those left at None
    (not given). The values stay typed; :meth:`Config.with_overrides` checks them."""
    return {k: v for k, v in (flags or {}).items() if v is not None}


def make_config(ctx: Any, flags: Mapping[str, Any] | None = None, *,
                default_profile: str | None = None, defaults: Mapping[str, Any] | None = None,
                implied: Mapping[str, Any] | None = None) -> Config:
    """The resolved profile of this invocation, later layers winning:

    1. the schema defaults, with the command's own ``defaults`` (profile key -> value) on top;
    2. the profile named by ``--profile`` (root or command; else ``default_profile``);
    3. ``implied``: values a flag implies but an explicit ``--set`` may still change;
    4. every ``--set`` in order (root first, then the command's);
    5. the command's ``flags`` (profile key -> typed value, None for a flag not given), then
       ``--device`` and ``--seed``;

    then the task's defaults for the keys still at their schema default. Flags and ``--set``
    items count as the user's choice (:meth:`Config.chosen`); flag values reach the profile
    typed (provenance ``--set``, as report headers list them with the ``--set`` items).

    Raises:
        ConfigError: an unknown profile, key or bad value, naming it.
    """
    from ebmctl.context import with_task_defaults

    opts = ctx.find_object(GlobalOptions) or GlobalOptions()
    cfg = resolve(opts.profile or default_profile, list(opts.sets))
    implied_here = {k: v for k, v in given(implied).items() if not cfg.chosen(k)}
    if implied_here:
        cfg = cfg.with_overrides(implied_here, "implied by a flag")
    typed = {**given(flags), **given({"run.device": opts.device or None, "run.seed": opts.seed})}
    if typed:
        cfg = cfg.with_overrides(typed, "--set", chosen=True)
    changed = {k: v for k, v in (defaults or {}).items() if cfg.is_default(k)}
    if changed:  # still at the schema default: a profile or --set would have replaced them
        cfg = cfg.with_overrides(changed, "default")
    return with_task_defaults(cfg)
