"""ebmctl: energy-based model defenses for image models, and honest attacks on them.

Plugins import only from :mod:`ebmctl.api` (and :mod:`ebmctl.testing` in their tests).
"""

__version__ = "0.1.0"
