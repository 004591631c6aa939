"""Commands whose issues have not landed: a clear error, never a fake result."""

from __future__ import annotations

import typer

from ebmctl.errors import NotAvailableError


def _pending(name: str, what: str):
    def command(ctx: typer.Context):
        raise NotAvailableError(f"`ebmctl {name}` ({what}) is not available yet in this build")

    command.__doc__ = f"{what[0].upper() + what[1:]} (not available yet)."
    return command


PENDING = {
    "synthesize": "sampling images from EBMs and the Hat EBM",
    "fix": "training and applying the fixer network",
    "ood": "out-of-distribution detection by energy",
    "lyapunov": "maximal Lyapunov exponent of the Langevin map",
}


def register_pending(app: typer.Typer, available: set[str]) -> None:
    for name, what in PENDING.items():
        if name not in available:
            app.command(name, context_settings={"allow_extra_args": True,
                                                "ignore_unknown_options": True})(_pending(name, what))
