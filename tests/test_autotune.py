"""The Langevin autotuner: every variant computes the reference step within its
precision's tolerance, explicit settings are never replaced, the cache is keyed by machine,
torch release and EBM shape and a bad cache file is ignored with a warning. No timing is
asserted anywhere: the tuner's choice depends on the machine, so tests only check that it is
one of the candidates and that it honours the fixed settings."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ebmctl.config import ConfigError
from ebmctl.nn.ebm import LightweightEBM
from ebmctl.sampling import autotune, fastgrad
from ebmctl.sampling.autotune import AUTO, Variant
from ebmctl.sampling.langevin import (LangevinConfig, LangevinSettings, energy_and_grad, frozen,
                                      langevin, langevin_chunked, sampler_gradient)

TAU, TEMP = 0.01, 5e-5
#: fp32 variants differ from the float64 gradient by float32 rounding only
FP32_REL = 1e-5
#: bf16/fp16 autocast: the drift keeps its direction to ~3 significant digits
REDUCED_COS = 0.99

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def ebm(size=8, channels=1, width=8, activation="leaky_relu", seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LightweightEBM(channels, size, width, activation=activation).eval()


def batch(n=24, channels=1, size=8, seed=1):
    return torch.rand((n, channels, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def tuner_on(monkeypatch, tmp_path):
    """The autotuner switched on, with a fresh cache directory and a fresh memo."""
    monkeypatch.setenv("EBMCTL_AUTOTUNE", "on")
    monkeypatch.setenv("EBMCTL_CACHE_DIR", str(tmp_path / "cache"))
    autotune.reset_memo()
    yield tmp_path / "cache"
    autotune.reset_memo()


@pytest.fixture
def fake_tune(monkeypatch):
    """tune() replaced by a stub returning ``choice`` (no timing): counts its calls."""
    calls = []

    def stub(net, x, request, build, explicit_ok, budget_s=0):
        calls.append(request)
        v = Variant(request.precision or "fp32", bool(request.channels_last),
                    request.block_rows if request.block_rows is not None else 0,
                    "explicit" if explicit_ok else "autograd")
        return v, {"candidates": {}, "chosen": v.name, "rows_per_s": 1.0, "tune_seconds": 0.0}

    monkeypatch.setattr(autotune, "tune", stub)
    return calls


def auto_settings(**kw):
    base = dict(precision=AUTO, channels_last=AUTO, block_rows=AUTO)
    base.update(kw)
    return LangevinSettings(TAU, TEMP, **base)


# --- every variant computes the same step -----------------------------------------------------

def all_variants(explicit=True):
    out = []
    for p in ("fp32", "bf16"):
        for cl in (False, True):
            for g in ("autograd", "explicit") if explicit else ("autograd",):
                for b in (0, 8):
                    out.append(Variant(p, cl, b, g))
    out.append(Variant("fp32", True, 8, "explicit", threads=1))
    out += [Variant(p, False, b, "dense") for p in ("fp32", "bf16") for b in (0, 8)]
    return out


@pytest.mark.parametrize("v", all_variants(), ids=lambda v: v.name)
def test_every_variant_gradient_matches_the_float64_reference(v):
    net, x = ebm(width=8), batch()
    ref_net = ebm(width=8).double()
    with frozen(ref_net):
        _, ref = energy_and_grad(ref_net, x.double())
    xs = x.contiguous(memory_format=torch.channels_last) if v.channels_last else x
    with frozen(net):
        got = sampler_gradient(net, v)(xs)
    assert got.shape == x.shape and got.dtype == torch.float32
    ref, got = ref.flatten(1), got.contiguous().flatten(1).double()
    if v.precision == "fp32":
        assert ((got - ref).norm() / ref.norm()).item() < FP32_REL
    else:
        cos = torch.nn.functional.cosine_similarity(ref, got, dim=1)
        assert cos.min().item() > REDUCED_COS


@pytest.mark.parametrize("v", [v for v in all_variants() if v.precision == "fp32"],
                         ids=lambda v: v.name)
def test_every_fp32_variant_step_matches_the_reference_step(v):
    """One Langevin step (same noise) of each variant against the fp32 reference step."""
    net, x = ebm(), batch()
    ref = langevin(net, x, 3, LangevinSettings(TAU, TEMP, compile=False, block_rows=0),
                   torch.Generator().manual_seed(5))
    got = langevin(net, x, 3, LangevinSettings(TAU, TEMP, variant=v),
                   torch.Generator().manual_seed(5))
    assert got.is_contiguous()
    assert torch.allclose(got, ref, atol=1e-6, rtol=0)


def test_a_one_thread_variant_restores_the_thread_count():
    net, x = ebm(), batch()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with frozen(net):
            sampler_gradient(net, Variant("fp32", False, 0, "explicit", threads=1))(x)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_explicit_gradient_equals_autograd_for_leaky_relu_and_relu():
    for activation in ("leaky_relu", "relu"):
        for size, channels, width in ((8, 1, 8), (12, 3, 4), (32, 3, 4)):
            net, x = ebm(size, channels, width, activation), batch(5, channels, size)
            with frozen(net):
                e_ref, g_ref = energy_and_grad(net, x)
                e, g = fastgrad.ExplicitGrad(net)(x, energy=True)
            assert torch.allclose(g, g_ref, rtol=1e-5, atol=1e-9), (activation, size)
            assert torch.allclose(e, e_ref, rtol=1e-5, atol=1e-6)


def test_explicit_gradient_when_the_last_layer_does_not_cover_the_map():
    net = ebm(8, 1, 4)
    net.net[-1] = nn.Conv2d(16, 1, 1)  # a 1x1 last layer: the energy sums over a 2x2 map
    x = batch(4)
    assert fastgrad.supports(net)
    with frozen(net):
        _, g_ref = energy_and_grad(net, x)
        g = fastgrad.ExplicitGrad(net)(x)
    assert torch.allclose(g, g_ref, rtol=1e-5, atol=1e-9)


def test_dense_lowering_matches_autograd_and_follows_weight_changes():
    """Layers on small maps as matrix products (8x8: the first layer's input gradient and the
    4x4 -> 2x2 layer); the matrices are rebuilt when an optimiser step changes the weights."""
    net, x = ebm(8, 1, 8), batch(6)
    assert fastgrad.dense_applies(net, (1, 8, 8))
    assert not fastgrad.dense_applies(ebm(32, 3, 32), (3, 32, 32))
    lowered = fastgrad.dense_layers([(c.weight.shape, c.stride, c.padding)
                                     for c in list(net.net)[0:-1:2]], (1, 8, 8))
    assert [(f, b) for f, b, _ in lowered] == [(False, True), (False, False), (True, True)]
    dense = fastgrad.ExplicitGrad(net, dense=True)
    with frozen(net):
        _, ref = energy_and_grad(net, x)
        assert torch.allclose(dense(x), ref, rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        net.net[4].weight.mul_(1.5)  # in place, as an optimiser step: a new version
    with frozen(net):
        _, ref = energy_and_grad(net, x)
        assert torch.allclose(fastgrad.ExplicitGrad(net, dense=True)(x), ref, rtol=1e-5,
                              atol=1e-8)
    with pytest.raises(ValueError):
        fastgrad.ExplicitGrad(net, channels_last=True, dense=True)


def test_smooth_and_other_networks_stay_on_autograd():
    assert fastgrad.supports(ebm())
    assert not fastgrad.supports(ebm(activation="smooth_leaky"))
    assert not fastgrad.supports(ebm(activation="silu"))

    class Sub(LightweightEBM):
        pass

    assert not fastgrad.supports(Sub(1, 8, 4))
    hooked = ebm()
    hooked.net[0].register_forward_hook(lambda *a: None)
    assert not fastgrad.supports(hooked)
    with pytest.raises(ValueError):
        fastgrad.ExplicitGrad(ebm(activation="smooth_leaky"))


def test_smooth_ebm_keeps_its_second_derivative(tuner_on, fake_tune):
    """The exact-gradient attack differentiates through the chain: create_graph still works
    and the tuner never offers the explicit gradient for a smooth EBM."""
    net, x = ebm(activation="smooth_leaky"), batch(4)
    xg = x.clone().requires_grad_(True)
    _, g = energy_and_grad(net, xg, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), xg)
    assert h.abs().sum() > 0
    v = autotune.resolve(net, x, auto_settings(), lambda v: sampler_gradient(net, v),
                         explicit_ok=fastgrad.supports(net))
    assert v.grad == "autograd"


def test_bf16_drift_check_is_what_admits_reduced_precision():
    net, x = ebm(), batch(16)
    build = lambda v: sampler_gradient(net, v)  # noqa: E731
    with frozen(net):
        assert autotune.drift_cosine_min(build, x, Variant("fp32", True, 0, "explicit")) > 0.99999
        assert autotune.drift_cosine_min(build, x, Variant("bf16", False, 0, "autograd")) > 0.99


# --- explicit settings, fixed rules ------------------------------------------------------------

def test_explicit_settings_are_never_replaced(tuner_on, fake_tune):
    net, x = ebm(), batch()
    build = lambda v: sampler_gradient(net, v)  # noqa: E731
    # nothing free: no tuning at all, exactly the given settings
    fixed = LangevinSettings(TAU, TEMP, precision="fp32", channels_last=False, block_rows=0,
                             compile=False)
    v = autotune.resolve(net, x, fixed, build, explicit_ok=True)
    assert v == Variant("fp32", False, 0, "autograd") and not fake_tune
    # channels_last = False fixed, the rest free: the tuner keeps it
    v = autotune.resolve(net, x, auto_settings(channels_last=False), build, explicit_ok=True)
    assert v.channels_last is False and fake_tune[-1].channels_last is False
    v = autotune.resolve(net, x, auto_settings(channels_last=True, precision="fp32"), build,
                         explicit_ok=True)
    assert v.channels_last is True and v.precision == "fp32"


def test_a_cache_entry_contradicting_the_settings_is_ignored(tuner_on, fake_tune):
    net, x = ebm(), batch()
    build = lambda v: sampler_gradient(net, v)  # noqa: E731
    settings = auto_settings(channels_last=False)
    autotune.resolve(net, x, settings, build, explicit_ok=True)
    path = autotune.cache_file(x.device)
    data = json.loads(path.read_text())
    (entry,) = data["entries"].values()
    entry["variant"]["channels_last"] = True  # tampered: contradicts channels_last = false
    path.write_text(json.dumps(data))
    autotune.reset_memo()
    with pytest.warns(autotune.AutotuneCacheWarning, match="contradicts"):
        v = autotune.resolve(net, x, settings, build, explicit_ok=True)
    assert v.channels_last is False and len(fake_tune) == 2


def test_tuner_off_means_the_fixed_rules(monkeypatch, fake_tune):
    monkeypatch.setenv("EBMCTL_AUTOTUNE", "off")
    autotune.reset_memo()
    net, x = ebm(32, 3, 4), batch(100, 3, 32)
    v = autotune.resolve(net, x, auto_settings(), lambda v: sampler_gradient(net, v),
                         explicit_ok=True)
    assert not fake_tune
    assert v == Variant(autotune.fixed_precision(x.device), False,
                        autotune.cpu_block_rows(x, net, LangevinSettings(TAU, TEMP)), "autograd")
    from ebmctl.device import resolve_precision

    assert resolve_precision("auto", x.device) == autotune.fixed_precision(x.device)
    monkeypatch.setenv("EBMCTL_AUTOTUNE", "on")
    assert resolve_precision("auto", x.device) == "auto"
    assert resolve_precision("fp32", x.device) == "fp32"


def test_ran_records_which_variant_ran(tuner_on, fake_tune):
    net, x = ebm(), batch()
    langevin(net, x, 1, auto_settings(), torch.Generator().manual_seed(0))
    langevin(net, x, 1, LangevinSettings(TAU, TEMP), torch.Generator().manual_seed(0))
    by = {r["chosen_by"]: r for r in autotune.ran()}
    assert by["measured"]["variant"] == "fp32-nchw-explicit-whole"
    assert by["explicit"]["variant"] == "fp32-nchw-autograd-whole"
    assert by["measured"]["row_shape"] == [1, 8, 8]


# --- the cache ---------------------------------------------------------------------------------

def test_choice_is_cached_and_reused(tuner_on, fake_tune):
    net, x = ebm(), batch()
    build = lambda v: sampler_gradient(net, v)  # noqa: E731
    v1 = autotune.resolve(net, x, auto_settings(), build, explicit_ok=True)
    path = autotune.cache_file(x.device)
    assert path.parent == tuner_on and path.exists()
    data = json.loads(path.read_text())
    assert data["format"] == autotune.CACHE_FORMAT and data["torch"] == torch.__version__
    autotune.reset_memo()
    v2 = autotune.resolve(net, x, auto_settings(), build, explicit_ok=True)
    assert v1 == v2 and len(fake_tune) == 1  # read back, not re-measured
    # retrained weights, same structure: same entry
    autotune.reset_memo()
    other = ebm(seed=3)
    autotune.resolve(other, x, auto_settings(), lambda v: sampler_gradient(other, v),
                     explicit_ok=True)
    assert len(fake_tune) == 1


def test_a_new_batch_bucket_reuses_the_nearest_tuned_bucket(tuner_on, fake_tune):
    """One run meets several batch sizes; only the first of an EBM/row shape is measured. A
    whole-batch choice made for 32 rows runs a 200-row batch in blocks of 32."""
    net = ebm()
    build = lambda v: sampler_gradient(net, v)  # noqa: E731
    small = autotune.resolve(net, batch(24), auto_settings(), build, explicit_ok=True)
    assert small.block_rows == 0 and len(fake_tune) == 1
    big = autotune.resolve(net, batch(200), auto_settings(), build, explicit_ok=True)
    assert len(fake_tune) == 1  # not measured again
    assert big == small.__class__(**{**small.to_dict(), "block_rows": 32})
    assert {"variant": big.name, "chosen_by": "cache (bucket 32)"}.items() <= next(
        r for r in autotune.ran() if r["batch_bucket"] == 256).items()
    tiny = autotune.resolve(net, batch(5), auto_settings(), build, explicit_ok=True)
    assert tiny == small and len(fake_tune) == 1  # fewer rows: whole batch stays whole
    # the reuse survives a new process (it reads the cache file), but never crosses structure,
    # row shape, fixed settings or dtype
    autotune.reset_memo()
    autotune.resolve(net, batch(100), auto_settings(), build, explicit_ok=True)
    assert len(fake_tune) == 1
    wide = ebm(width=16)
    autotune.resolve(wide, batch(100), auto_settings(), lambda v: sampler_gradient(wide, v),
                     explicit_ok=True)
    autotune.resolve(net, batch(100, size=16), auto_settings(),
                     lambda v: sampler_gradient(net, v), explicit_ok=True)
    autotune.resolve(net, batch(100), auto_settings(channels_last=False), build,
                     explicit_ok=True)
    dnet = ebm().double()
    autotune.resolve(dnet, batch(100).double(), auto_settings(),
                     lambda v: sampler_gradient(dnet, v), explicit_ok=True)
    assert len(fake_tune) == 5


def test_a_reused_bucket_keeps_a_measured_block_size(tuner_on, fake_tune, monkeypatch):
    net = ebm()
    build = lambda v: sampler_gradient(net, v)  # noqa: E731
    blocked = Variant("fp32", False, 16, "autograd")
    monkeypatch.setattr(autotune, "tune", lambda *a, **k: (blocked, {"candidates": {}}))
    autotune.resolve(net, batch(60), auto_settings(), build, explicit_ok=False)
    monkeypatch.setattr(autotune, "tune", lambda *a, **k: pytest.fail("measured again"))
    assert autotune.resolve(net, batch(500), auto_settings(), build, explicit_ok=False) == blocked


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": "something-else"}',
                                     "\x00\x01"])
def test_a_corrupt_cache_file_is_ignored_with_a_warning(tuner_on, fake_tune, content):
    net, x = ebm(), batch()
    path = autotune.cache_file(x.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    with pytest.warns(autotune.AutotuneCacheWarning, match="ignoring the autotune cache"):
        v = autotune.resolve(net, x, auto_settings(), lambda v: sampler_gradient(net, v),
                             explicit_ok=True)
    assert len(fake_tune) == 1 and v.precision == "fp32"
    data = json.loads(path.read_text())  # rewritten whole, atomically
    assert data["format"] == autotune.CACHE_FORMAT and len(data["entries"]) == 1


def test_a_foreign_cache_file_is_ignored_with_a_warning(tuner_on, fake_tune):
    net, x = ebm(), batch()
    build = lambda v: sampler_gradient(net, v)  # noqa: E731
    autotune.resolve(net, x, auto_settings(), build, explicit_ok=True)
    path = autotune.cache_file(x.device)
    data = json.loads(path.read_text())
    data["machine"] = {**data["machine"], "cpu": "Some Other CPU"}
    path.write_text(json.dumps(data))
    autotune.reset_memo()
    with pytest.warns(autotune.AutotuneCacheWarning, match="another machine"):
        autotune.resolve(net, x, auto_settings(), build, explicit_ok=True)
    assert len(fake_tune) == 2
    bad_entry = json.loads(path.read_text())
    for e in bad_entry["entries"].values():
        e["variant"] = {"precision": "fp99"}
    path.write_text(json.dumps(bad_entry))
    autotune.reset_memo()
    with pytest.warns(autotune.AutotuneCacheWarning, match="malformed"):
        autotune.resolve(net, x, auto_settings(), build, explicit_ok=True)
    assert len(fake_tune) == 3


def test_cache_key_changes_with_ebm_shape_batch_and_torch(monkeypatch, tuner_on):
    req = autotune.Request(None, None, None, None)
    x8, x32 = batch(24), batch(24, 3, 32)
    key = autotune.cache_key(ebm(), x8, req)
    assert autotune.cache_key(ebm(seed=9), x8, req) == key  # weights do not matter
    assert autotune.cache_key(ebm(width=16), x8, req) != key
    assert autotune.cache_key(ebm(activation="relu"), x8, req) != key
    assert autotune.cache_key(ebm(32, 3, 8), x32, req) != key
    assert autotune.cache_key(ebm(), batch(200), req) != key  # another batch bucket
    assert autotune.cache_key(ebm(), batch(30), req) == key  # same bucket (32)
    assert autotune.cache_key(ebm(), x8, autotune.Request(None, False, None, None)) != key
    assert autotune.cache_key(ebm().double(), x8.double(), req) != key
    cpu = torch.device("cpu")
    before = autotune.cache_file(cpu)
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert autotune.cache_file(cpu) != before  # one file per torch release


def test_real_tuning_on_a_tiny_ebm_picks_a_candidate(tuner_on):
    """End to end with real timings (tiny shapes: well under a second); only the structure
    of the outcome is checked."""
    net, x = ebm(8, 1, 4), batch(32)
    settings = auto_settings(channels_last=False)
    with frozen(net):
        v = autotune.resolve(net, x, settings, lambda v: sampler_gradient(net, v),
                             explicit_ok=True)
    report = autotune.last_report(net, x, settings)
    assert v.channels_last is False and v.precision in ("fp32", "bf16")
    assert v.name == report["name"] == report["measured"]["chosen"]
    assert v.name in report["measured"]["candidates"]
    assert not any("-cl-" in name for name in report["measured"]["candidates"])
    entry = next(iter(json.loads(autotune.cache_file(x.device).read_text())["entries"].values()))
    assert Variant.from_dict(entry["variant"]) == v


# --- profile keys --------------------------------------------------------------------------

def test_profile_keys_accept_auto_and_explicit_values():
    from ebmctl.profiles import resolve

    cfg = resolve(None)
    lc = cfg.section(LangevinConfig)
    assert lc.channels_last == AUTO and lc.chunk_size == AUTO and lc.compile is False
    assert lc.chunk_rows == 2048
    s = lc.settings(torch.device("cpu"))
    assert s.channels_last == AUTO and s.block_rows == AUTO
    cfg = resolve(None, ["langevin.channels_last=false", "langevin.chunk_size=512",
                         "langevin.compile=auto", "langevin.precision=fp32"])
    lc = cfg.section(LangevinConfig)
    assert lc.channels_last is False and lc.chunk_size == 512 and lc.compile == AUTO
    s = lc.settings(torch.device("cpu"))
    assert s.channels_last is False and s.block_rows is None and lc.chunk_rows == 512
    assert resolve(None, ["langevin.channels_last=AUTO"])["langevin.channels_last"] == AUTO
    for bad in ("langevin.channels_last=maybe", "langevin.chunk_size=0",
                "langevin.chunk_size=1.5", "langevin.compile=2"):
        with pytest.raises(ConfigError):
            resolve(None, [bad])


def test_auto_chunks_draw_the_noise_of_2048_row_chunks():
    net, x = ebm(), batch(40)
    key = lambda i: torch.Generator().manual_seed(100 + i)  # noqa: E731
    s = LangevinSettings(TAU, TEMP)
    a = langevin_chunked(net, x, 2, s, AUTO, key)
    b = langevin_chunked(net, x, 2, s, 2048, key)
    assert torch.equal(a, b)  # tuner off in tests: the same variant, the same noise
