"""Flow-matching generator: config, net, path, training, resume, sampling (smoke size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from thyroaug.config import resolve
from thyroaug.contract import CLASSES
from thyroaug.errors import ConfigError, GeneratorError
from thyroaug.generators.base import sample_seed
from thyroaug.generators.flow_matching.bank import MaskBank
from thyroaug.generators.flow_matching.config import FMConfig
from thyroaug.generators.flow_matching.model import (
    VelocityNet,
    cond_ot_path,
    count_parameters,
    flow_matching_loss,
)
from thyroaug.generators.flow_matching.pipeline import (
    FlowMatchingPipeline,
    load_generator,
    save_generator,
)
from thyroaug.generators.flow_matching.sampler import ODESampler, initial_noise, to_data_range
from thyroaug.generators.flow_matching.train import prepare_training_data, train_flow_matching


def smoke(**overrides) -> FMConfig:
    return resolve(FMConfig, "smoke", **overrides)


def batch(cfg: FMConfig, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    x = torch.randn(n, 1, s, s, generator=g)
    t = torch.rand(n, generator=g)
    labels = torch.arange(n) % len(CLASSES)
    masks = (torch.rand(n, 1, s, s, generator=g) > 0.5).float()
    return x, t, labels, masks


# --- config and network ---------------------------------------------------------------------
def test_paper_profile_is_the_motfm_network():
    cfg = resolve(FMConfig, "paper")
    assert cfg.conditioning == "class+mask" and cfg.solver == "euler" and cfg.steps == 10
    assert cfg.lr == 1e-4 and cfg.epochs == 200
    with torch.device("meta"):
        net = VelocityNet(cfg)
    counts = count_parameters(net)
    assert round(counts["unet"] / 1e6, 1) == 71.2
    assert round(counts["controlnet"] / 1e6, 1) == 31.2


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="conditioning"):
        smoke(conditioning="class_and_mask")
    with pytest.raises(ConfigError, match="solver"):
        smoke(solver="heun")
    with pytest.raises(ConfigError, match="divisible"):
        smoke(image_size=33)
    assert resolve(FMConfig, "quick").image_size <= 64


@pytest.mark.parametrize(
    ("mode", "has_control", "has_context"),
    [
        ("class+mask", True, True),
        ("class", False, True),
        ("mask", True, False),
        ("none", False, False),
    ],
)
def test_conditioning_modes_build_the_right_branches(mode, has_control, has_context):
    cfg = smoke(conditioning=mode)
    net = VelocityNet(cfg)
    assert (net.controlnet is not None) == has_control
    assert net.unet.with_conditioning == has_context
    x, t, labels, masks = batch(cfg)
    out = net(x, t, labels, masks)
    assert out.shape == x.shape and torch.isfinite(out).all()
    if has_context:
        with pytest.raises(ValueError, match="labels"):
            net(x, t, None, masks)
    if has_control:
        with pytest.raises(ValueError, match="masks"):
            net(x, t, labels, None)


def _randomise_zero_inits(module: torch.nn.Module) -> None:
    """MONAI zero-initialises output and attention projections: make them matter in tests."""
    with torch.no_grad():
        for p in module.parameters():
            if float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.2)


def test_class_changes_the_velocity():
    net = VelocityNet(smoke(conditioning="class"))
    _randomise_zero_inits(net)
    x, t, _, _ = batch(net.config, n=1)
    v = [net(x, t, torch.tensor([k])) for k in range(len(CLASSES))]
    assert not torch.equal(v[0], v[3])


def test_controlnet_branch_is_a_no_op_at_init():
    torch.manual_seed(3)
    net = VelocityNet(smoke()).eval()
    shared = net.unet.state_dict()  # ControlNet = copy of the UNet encoder + zero convolutions
    copied = [k for k in net.controlnet.state_dict() if k in shared]
    assert len(copied) > 10
    assert all(torch.equal(net.controlnet.state_dict()[k], shared[k]) for k in copied)
    _randomise_zero_inits(net.unet)  # a non-trivial UNet; the ControlNet stays as initialised
    x, t, labels, masks = batch(net.config, n=4)
    with torch.no_grad():
        with_mask = net(x, t, labels, masks)
        other_mask = net(x, t, labels, 1 - masks)
        steps = net.timesteps(t, 4)
        context = net.context(labels, x.dtype)
        plain = net.unet(x=x, timesteps=steps, context=context)
        down, mid = net.controlnet(x=x, timesteps=steps, controlnet_cond=masks, context=context)
    assert float(plain.abs().max()) > 0
    assert torch.equal(with_mask, plain) and torch.equal(other_mask, plain)
    assert all(float(r.abs().max()) == 0.0 for r in [*down, mid])
    _randomise_zero_inits(net.controlnet)  # once trained, the mask does matter
    with torch.no_grad():
        assert not torch.equal(net(x, t, labels, masks), net(x, t, labels, 1 - masks))


# --- path and loss --------------------------------------------------------------------------
def test_cond_ot_path_formula_and_endpoints():
    x0, x1 = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    x_t, u_t = cond_ot_path(x0, x1, t)
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(x_t[-1], x1[-1])
    assert torch.allclose(x_t[2], 0.5 * (x0[2] + x1[2]))
    assert torch.equal(u_t, x1 - x0)


def test_cond_ot_path_equals_flow_matching_library():
    fm_path = pytest.importorskip("flow_matching.path")
    from flow_matching.path.scheduler import CondOTScheduler

    x0, x1, t = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8), torch.rand(6)
    ref = fm_path.AffineProbPath(scheduler=CondOTScheduler()).sample(t=t, x_0=x0, x_1=x1)
    x_t, u_t = cond_ot_path(x0, x1, t)
    assert torch.allclose(x_t, ref.x_t, atol=1e-6) and torch.allclose(u_t, ref.dx_t, atol=1e-6)


# --- data -----------------------------------------------------------------------------------
def test_training_data_uses_train_split_scaled_and_resized(tiny_cohort):
    cfg = smoke(image_size=16)
    data = prepare_training_data(tiny_cohort, cfg)
    n_train = int((tiny_cohort.table["split"] == "train").sum())
    assert len(data) == n_train and data.images.shape[-1] == 16
    assert data.images.min() >= -1 and data.images.max() <= 1 and data.images.min() < -0.5
    assert set(torch.unique(data.masks).tolist()) <= {0.0, 1.0}
    bank = data.mask_bank()
    assert len(bank) == n_train and bank.masks.dtype == torch.uint8


# --- training and resume ----------------------------------------------------------------------
def test_a_few_epochs_lower_the_loss(tiny_cohort, tmp_path):
    cfg = smoke(epochs=3)
    data = prepare_training_data(tiny_cohort, cfg)
    g = torch.Generator().manual_seed(7)
    x1, labels, masks = data.images[:16], data.labels[:16], data.masks[:16]
    x0, t = torch.randn(x1.shape, generator=g), torch.rand(16, generator=g)

    def fixed_loss(net):
        with torch.no_grad():
            return float(flow_matching_loss(net.eval(), x0, x1, t, labels, masks))

    torch.manual_seed(cfg.seed)
    before = fixed_loss(VelocityNet(cfg))
    result = train_flow_matching(cfg, tiny_cohort, tmp_path, progress=False, log_mlflow=False)
    assert len(result.losses) == 3 and result.losses[-1] < result.losses[0]
    assert fixed_loss(result.net) < 0.8 * before
    assert (tmp_path / "checkpoint.pt").exists()


def test_resume_equals_uninterrupted(tiny_cohort, tmp_path):
    full = train_flow_matching(
        smoke(epochs=2), tiny_cohort, tmp_path / "a", progress=False, log_mlflow=False
    )
    train_flow_matching(
        smoke(epochs=1), tiny_cohort, tmp_path / "b", progress=False, log_mlflow=False
    )
    torch.manual_seed(123)  # a resumed process starts with other RNG states
    np.random.seed(123)
    resumed = train_flow_matching(
        smoke(epochs=2), tiny_cohort, tmp_path / "b", resume=True, progress=False, log_mlflow=False
    )
    assert resumed.losses == full.losses
    for a, b in [(full.net, resumed.net), (full.ema_net, resumed.ema_net)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_guards(tiny_cohort, tmp_path):
    train_flow_matching(smoke(epochs=1), tiny_cohort, tmp_path, progress=False, log_mlflow=False)
    with pytest.raises(ConfigError, match="--resume"):
        train_flow_matching(
            smoke(epochs=2), tiny_cohort, tmp_path, progress=False, log_mlflow=False
        )
    with pytest.raises(ConfigError, match="lr"):
        train_flow_matching(
            smoke(epochs=2, lr=1e-3), tiny_cohort, tmp_path, resume=True, log_mlflow=False
        )


# --- sampling -----------------------------------------------------------------------------------
@pytest.fixture
def pipeline(tiny_cohort) -> FlowMatchingPipeline:
    cfg = smoke()
    torch.manual_seed(0)
    net = VelocityNet(cfg)
    bank = prepare_training_data(tiny_cohort, cfg).mask_bank()
    return FlowMatchingPipeline(net, mask_bank=bank, device="cpu")


def test_sample_shape_dtype_range_and_provenance(pipeline):
    out = pipeline.sample(["DG", "NG", 2, 3], [0, 1, 2, 3])
    assert out.images.shape == (4, 1, 32, 32) and out.images.dtype == torch.float32
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert out.columns["solver"] == ["euler"] * 4 and out.columns["steps"] == [10] * 4
    bank = pipeline.mask_bank
    for label, case in zip(range(4), out.columns["source_id"]):
        assert CLASSES[int(bank.labels[bank.case_ids.index(case)])] == CLASSES[label]


@pytest.mark.parametrize("solver", ["midpoint", "rk4", "dopri5"])
def test_other_solvers_run(pipeline, solver):
    out = pipeline.sample(["NL"], [5], solver=solver, steps=3)
    assert torch.isfinite(out.images).all() and out.columns["solver"] == [solver]


def test_same_seed_label_mask_same_image_regardless_of_batch(pipeline):
    a = pipeline.sample(["DG", "TI", "NG"], [11, 12, 13]).images
    b = pipeline.sample(["DG", "TI", "NG"], [11, 12, 13]).images
    assert torch.equal(a, b)
    alone = pipeline.sample(["TI"], [12]).images
    reordered = pipeline.sample(["NG", "NL", "TI", "DG"], [13, 99, 12, 11], batch_size=2).images
    assert torch.allclose(alone[0], a[1], atol=1e-5)
    assert torch.allclose(reordered[2], a[1], atol=1e-5)
    assert torch.allclose(reordered[3], a[0], atol=1e-5)
    other = pipeline.sample(["DG"], [14]).images
    assert not torch.allclose(other[0], a[0])


def test_explicit_masks_are_validated(pipeline):
    ok = pipeline.sample(["DG"], [0], masks=torch.ones(1, 32, 32))
    assert ok.columns["source_id"] == ["request"]
    with pytest.raises(GeneratorError, match="masks must be"):
        pipeline.sample(["DG"], [0], masks=torch.ones(1, 1, 16, 16))
    with pytest.raises(GeneratorError, match="unknown label"):
        pipeline.sample(["XX"], [0])
    with pytest.raises(GeneratorError, match="seeds"):
        pipeline.sample(["DG", "NG"], [0])
    with pytest.raises(GeneratorError, match="no modes"):
        pipeline.sample(["DG"], [0], mode="SD1")


def test_class_only_generator_refuses_masks():
    net = VelocityNet(smoke(conditioning="class"))
    pipe = FlowMatchingPipeline(net, device="cpu")
    assert pipe.sample(["NG"], [1]).columns["source_id"] == [""]
    with pytest.raises(GeneratorError, match="not on masks"):
        pipe.sample(["NG"], [1], masks=torch.ones(1, 1, 32, 32))


def test_euler_takes_exactly_the_requested_steps():
    calls = []

    def field(t, x):
        calls.append(float(t))
        return -x

    x0 = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    out = ODESampler("euler", 10).integrate(field, x0)
    assert len(calls) == 10 and calls[0] == 0.0
    assert torch.allclose(out, x0 * 0.9**10)
    assert ODESampler("rk4", 5).evaluations == 20 and ODESampler("dopri5").evaluations is None
    with pytest.raises(GeneratorError):
        ODESampler("heun")


def test_noise_is_per_sample_and_output_is_clipped_not_stretched():
    a = initial_noise([1, 2], (1, 4, 4))
    b = initial_noise([2], (1, 4, 4))
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 3.0])
    assert torch.equal(to_data_range(x), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0]))
    flat = to_data_range(torch.full((1, 1, 2, 2), -0.5))
    assert torch.equal(flat, torch.full((1, 1, 2, 2), 0.25))  # a dim image stays dim


def test_mask_bank_pick_is_seeded_and_roundtrips(tmp_path):
    masks = (torch.rand(10, 1, 8, 8) > 0.5).to(torch.uint8)
    bank = MaskBank(masks, torch.tensor([0, 1] * 5), [f"c{i}" for i in range(10)])
    picks = [bank.pick(1, s) for s in range(20)]
    assert picks == [bank.pick(1, s) for s in range(20)]
    assert all(int(bank.labels[p]) == 1 for p in picks) and len(set(picks)) > 1
    bank.save(tmp_path)
    back = MaskBank.load(tmp_path)
    assert torch.equal(back.masks, bank.masks) and back.case_ids == bank.case_ids
    with pytest.raises(GeneratorError, match="no training mask"):
        MaskBank(masks[:2], torch.tensor([0, 0]), ["a", "b"]).pick(3, 0)


def test_generator_folder_roundtrip(pipeline, tmp_path):
    """The folder holds weights + config only; with the bank given back it samples the same."""
    folder = save_generator(tmp_path / "gen", pipeline.net, pipeline.mask_bank, {"epochs_done": 0})
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    seeds = [sample_seed(0, k, 0) for k in range(4)]
    expected = pipeline.sample(list(CLASSES), seeds).images
    loaded = load_generator(folder, device="cpu", mask_bank=pipeline.mask_bank)
    assert torch.equal(loaded.sample(list(CLASSES), seeds).images, expected)
    with pytest.raises(GeneratorError, match="no mask bank loaded"):
        load_generator(folder, device="cpu").sample(list(CLASSES), seeds)
    embedded = save_generator(
        tmp_path / "emb", pipeline.net, pipeline.mask_bank, {}, embed_bank=True
    )
    assert {"masks.safetensors", "masks.csv"} <= {p.name for p in embedded.iterdir()}
    again = load_generator(embedded, device="cpu").sample(list(CLASSES), seeds).images
    assert torch.equal(again, expected)
    with pytest.raises(GeneratorError, match="not a flow-matching"):
        load_generator(Path(tmp_path))


# --- fast sampling path ---------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_direct_fixed_step_loop_is_bitwise_odeint(solver, steps):
    """The direct loop replaces torchdiffeq for fixed steps: the same result to the bit."""
    g = torch.Generator().manual_seed(steps)
    w = torch.randn(8, 8, generator=g) / 3

    def field(t, x):  # nonlinear in x and t, so every stage and time value matters
        return torch.tanh(x @ w) * (1 + t) - x * t * t

    x0 = torch.randn(3, 1, 8, 8, generator=g)
    sampler = ODESampler(solver, steps)
    assert torch.equal(sampler.integrate(field, x0), sampler.integrate_odeint(field, x0))


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
def test_direct_loop_is_bitwise_odeint_on_the_net(solver):
    torch.manual_seed(0)
    net = VelocityNet(smoke()).eval()
    _randomise_zero_inits(net)
    x, _, labels, masks = batch(net.config, n=3)
    sampler = ODESampler(solver, 3)
    with torch.inference_mode():

        def field(t, y):
            return net(y, t, labels, masks)

        assert torch.equal(sampler.integrate(field, x), sampler.integrate_odeint(field, x))


def _trained_like_pipeline(**kwargs) -> FlowMatchingPipeline:
    torch.manual_seed(0)
    net = VelocityNet(smoke()).eval()
    _randomise_zero_inits(net)
    return FlowMatchingPipeline(net, device="cpu", **kwargs)


def test_mask_embedding_is_computed_once_per_batch_with_the_same_result():
    """The sampling view (mask embedding once per batch, direct Euler loop) in the net's own
    layout and kernels gives bitwise what odeint over ``VelocityNet.forward`` gives."""
    pipe = _trained_like_pipeline(channels_last=False, onednn_linear=False, retain_heap=False)
    calls = []
    view = pipe._sampling_net
    assert view.cond_embedding is not None
    view.cond_embedding.register_forward_hook(lambda *_: calls.append(1))
    x0, _, labels, masks = batch(pipe.config, n=4)
    out = pipe.generate(x0, labels, masks)
    assert len(calls) == 1  # not once per step
    with torch.inference_mode():
        ref = ODESampler("euler", 10).integrate_odeint(
            lambda t, y: pipe.net(y, t, labels, masks), x0
        )
    assert torch.equal(out, ref)


def test_default_cpu_path_matches_the_plain_net_and_is_deterministic():
    plain = _trained_like_pipeline(channels_last=False, onednn_linear=False, retain_heap=False)
    fast = _trained_like_pipeline()  # CPU defaults: channels-last, oneDNN linear, heap retention
    assert fast.channels_last and fast.retain_heap
    x0, _, labels, masks = batch(fast.config, n=4)
    a, b = plain.generate(x0, labels, masks), fast.generate(x0, labels, masks)
    assert float(a.abs().max()) > 0.1 and b.is_contiguous()
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(b, fast.generate(x0, labels, masks))
    seeds, classes = [3, 4, 5], ["DG", "NL", "TI"]
    m = (torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    assert torch.equal(
        fast.sample(classes, seeds, masks=m).images, fast.sample(classes, seeds, masks=m).images
    )


def test_sampling_view_shares_the_weights_and_leaves_the_net_alone():
    pipe = _trained_like_pipeline()
    x0, _, labels, masks = batch(pipe.config, n=2)
    before = pipe.generate(x0, labels, masks)
    assert not any(type(m).__name__ == "OneDNNLinear" for m in pipe.net.modules())
    in_view = any(type(m).__name__ == "OneDNNLinear" for m in pipe._sampling_net.modules())
    assert in_view == pipe.onednn_linear
    view_params = {id(p) for p in pipe._sampling_net.parameters()}
    assert view_params == {id(p) for p in pipe.net.parameters()}
    with torch.no_grad():  # an in-place weight change (an EMA update) reaches the sampler
        pipe.net.unet.out[-1].conv.weight.mul_(2.0)
    assert not torch.allclose(before, pipe.generate(x0, labels, masks))


def test_onednn_linear_matches_f_linear_and_keeps_autograd():
    from thyroaug.generators.flow_matching.fast_sampling import (
        OneDNNLinear,
        onednn_linear_available,
    )

    lin = torch.nn.Linear(16, 8)
    fast = OneDNNLinear(lin)
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        assert torch.allclose(fast(x), lin(x), atol=1e-6)
    y = fast(x.requires_grad_(True))  # with grad: plain F.linear, differentiable
    y.sum().backward()
    assert x.grad is not None and lin.weight.grad is not None
    assert isinstance(onednn_linear_available(), bool)


def test_heap_retention_is_released_after_sample(monkeypatch):
    from thyroaug.generators.flow_matching import pipeline as pipeline_module
    from thyroaug.generators.flow_matching.fast_sampling import retain_freed_heap

    released = []
    monkeypatch.setattr(pipeline_module, "release_freed_heap", lambda: released.append(1))
    pipe = _trained_like_pipeline()
    m = torch.ones(2, 1, 32, 32)
    pipe.sample(["DG", "NG"], [0, 1], masks=m, batch_size=1)
    assert released == [1]  # once per sample() call, not per batch
    assert isinstance(retain_freed_heap(), bool)
    off = _trained_like_pipeline(retain_heap=False)
    off.sample(["DG"], [0], masks=m[:1])
    assert released == [1]
