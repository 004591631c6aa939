"""The ebmctl command line: a thin typer app. Errors become one line and a non-zero exit."""

from __future__ import annotations

import ebmctl.openmp_policy  # noqa: F401  (before torch: OpenMP workers wait passively)
import sys

import click
import typer

from ebmctl import __version__
from ebmctl.commands import (
    attack,
    bench,
    compare,
    fix,
    import_model,
    inspect,
    lyapunov,
    ood,
    plugins,
    profiles,
    purify,
    quickstart,
    report,
    synthesize,
    train,
)
from ebmctl.commands.common import (
    DebugOpt,
    DeviceOpt,
    GlobalOptions,
    ProfileOpt,
    SeedOpt,
    SetOpt,
)
from ebmctl.errors import EbmctlError

app = typer.Typer(name="ebmctl", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Energy-based model defenses for image models, and honest attacks on them.")


def _print_version(value: bool) -> None:
    # Eager, so that `ebmctl --version` needs no command (a group otherwise demands one first).
    if value:
        print(f"ebmctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    ctx: typer.Context,
    profile: ProfileOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
    seed: SeedOpt = None, debug: DebugOpt = False,
    version: bool = typer.Option(False, "--version", help="print the version and exit",
                                 is_eager=True, callback=_print_version),
):
    """Global options apply to every command; a command that reads a profile also takes them
    after its name, and those take precedence."""
    ctx.obj = GlobalOptions(profile, tuple(set_ or ()), device, seed, debug)
    from ebmctl.plugins import warn_failures

    warn_failures()


# Each module exports a typer app; a nameless one adds its command(s), a named one a group.
for module in (purify, attack, quickstart, plugins, inspect, lyapunov, synthesize, ood, bench,
               import_model, report, compare, train, profiles, fix):
    app.add_typer(module.app)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; never lets a traceback escape unless --debug."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        rv = app(args=argv, prog_name="ebmctl", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except EbmctlError as exc:
        if debug:
            raise
        print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except (click.exceptions.Exit, typer.Exit) as exc:
        return exc.exit_code
    except (click.exceptions.ClickException, typer.TyperException) as exc:
        # Typer vendors its own copy of click, whose usage errors (a missing option, an unknown
        # option or command, a bad value) derive from TyperException rather than click's.
        if hasattr(exc, "show"):
            exc.show(file=sys.stderr)
        else:
            print(f"Error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except (click.exceptions.Abort, typer.Abort):
        print("Aborted.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except MemoryError:
        print("Error: out of memory; lower langevin.chunk_size or attack.batch_size",
              file=sys.stderr)
        return 1
    except Exception as exc:  # an internal bug: one line, traceback only with --debug
        if debug:
            raise
        msg = " ".join(str(exc).split())[:300]
        print(f"Error: internal error ({type(exc).__name__}: {msg}); rerun with --debug for the "
              "traceback", file=sys.stderr)
        return 1


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
