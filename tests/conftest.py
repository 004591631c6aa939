import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _fresh_plugins():
    from ebmctl.plugins import reset

    reset()
    yield
    reset()


@pytest.fixture
def crash_on_call(monkeypatch):
    """``crash_on_call(module, name, n)`` makes ``module.name`` raise KeyboardInterrupt on its
    n-th call (a kill mid-run) and returns a function that puts the original back."""

    def install(module, name: str, n: int):
        real, calls = getattr(module, name), [0]

        def crashing(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, crashing)
        return lambda: monkeypatch.setattr(module, name, real)

    return install
