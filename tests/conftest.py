import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Sampler settings left "auto" follow the fixed rules here, so results never depend on timings
# (tests/test_autotune.py switches the tuner on itself, with its own cache directory); nothing
# a test runs reads or writes the user's cache.
os.environ.setdefault("EBMCTL_AUTOTUNE", "off")
os.environ.setdefault("EBMCTL_CACHE_DIR", tempfile.mkdtemp(prefix="ebmctl-test-cache-"))


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


@pytest.fixture(scope="session")
def digits_artifacts(tmp_path_factory):
    """An (untrained) 8x8 digits classifier and EBM saved as real artifacts: (clf, ebm) paths."""
    from builders import random_classifier, random_ebm

    d = tmp_path_factory.mktemp("art")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # one stream: the classifier's weights, then the EBM's
        clf_path = random_classifier(d / "clf.safetensors", width=8, seed=None)
        ebm_path = random_ebm(d / "ebm.safetensors", channels=8, seed=None)
    return clf_path, ebm_path


def _single_thread():
    # tiny tensors: one thread avoids OpenMP spin-waiting on a busy machine, and keeps exact
    # float results independent of the thread count
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


#: ``pytestmark = pytest.mark.usefixtures("one_thread")``: torch on one thread for each test
one_thread = pytest.fixture(_single_thread, name="one_thread")
#: the same for a whole module, so module-scoped fixtures (trained models) also run on one thread
one_thread_per_module = pytest.fixture(_single_thread, scope="module",
                                       name="one_thread_per_module")
