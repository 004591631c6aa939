"""ebmctl: energy-based model defenses for image models, and honest attacks on them.

Plugins import only from :mod:`ebmctl.api` (and :mod:`ebmctl.testing` in their tests).
Users of the library call ``ebmctl.defend``, ``ebmctl.evaluate`` and ``ebmctl.load_ebm``
(docs/python-api.md); they are imported on first use, so ``import ebmctl`` stays light.
"""

__version__ = "0.1.0"

_LIBRARY = {"defend": "ebmctl.defended", "load_ebm": "ebmctl.defended",
            "DefendedModel": "ebmctl.defended"}


def __getattr__(name: str):
    if name == "evaluate":  # the callable subpackage ebmctl.evaluate (see its __init__)
        import importlib

        return importlib.import_module("ebmctl.evaluate")
    if name in _LIBRARY:
        import importlib

        return getattr(importlib.import_module(_LIBRARY[name]), name)
    raise AttributeError(f"module 'ebmctl' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LIBRARY) + ["evaluate"])
