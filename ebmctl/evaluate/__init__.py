"""Evaluation: metrics, reports, plots. The package itself is callable:
``ebmctl.evaluate(model, x, y, ...)`` is :func:`ebmctl.evaluate.library.evaluate`, so the
function and the package (``import ebmctl.evaluate.report``) share one name."""

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from ebmctl.evaluate.library import evaluate

        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
