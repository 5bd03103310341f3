"""The flat-buffer population: views, the flat optimizer against torch.optim, state round trip."""

import copy

import pytest
import torch
from torch.nn import functional as F

from wash_sweeps.config import TrainConfig
from wash_sweeps.models import build_model, layer_index
from wash_sweeps.population import Population, flat_spec
from wash_sweeps.regularization import MemberRegularization


def _setup(**kw):
    cfg = TrainConfig.from_preset("tiny", **kw)
    return cfg, Population(cfg, (1, 40), 10)


def test_parameters_and_grads_are_views_of_the_flat_rows():
    _, pop = _setup()
    for r, model in enumerate(pop.models):
        for e, p in zip(pop.spec.params, model.parameters(), strict=True):
            assert p.data_ptr() == pop.params[r, e.offset :].data_ptr()
            assert p.grad.data_ptr() == pop.grads[r, e.offset :].data_ptr()
    with torch.no_grad():
        pop.params[1].fill_(3.0)
    assert all(bool((p == 3.0).all()) for p in pop.models[1].parameters())


def test_members_have_different_inits_unless_same_init():
    _, pop = _setup()
    assert not torch.equal(pop.params[0], pop.params[1])
    _, same = _setup(same_init=True)
    assert torch.equal(same.params[0], same.params[2])


@pytest.mark.parametrize(
    "opt_kw",
    [
        dict(optimizer="sgd", momentum=0.9, weight_decay=5e-4),
        dict(optimizer="sgd", momentum=0.9, weight_decay=0.0, nesterov=True),
        dict(optimizer="sgd", momentum=0.0, weight_decay=1e-3),
        dict(optimizer="adamw", weight_decay=0.01),
    ],
)
def test_flat_optimizer_matches_torch_optim(opt_kw):
    cfg, pop = _setup(**opt_kw)
    ref = [copy.deepcopy(m) for m in pop.models]
    for m, r in zip(pop.models, ref, strict=True):  # the deep copies own fresh tensors
        for p_ref, p in zip(r.parameters(), m.parameters(), strict=True):
            p_ref.data = p.data.clone()
            p_ref.grad = None
    if cfg.optimizer == "sgd":
        opts = [
            torch.optim.SGD(
                r.parameters(),
                lr=0.05,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                nesterov=cfg.nesterov,
            )
            for r in ref
        ]
    else:
        opts = [
            torch.optim.AdamW(r.parameters(), lr=0.05, weight_decay=cfg.weight_decay) for r in ref
        ]
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        batches = [
            (torch.randn(16, 1, 40, generator=g), torch.randint(0, 10, (16,), generator=g))
            for _ in range(pop.n_local)
        ]
        pop.train_step(batches, lr=0.05, step=step)
        for r, o, (x, y) in zip(ref, opts, batches, strict=True):
            o.zero_grad()
            F.cross_entropy(r(x), y).backward()
            o.step()
    for r, m in zip(ref, pop.models, strict=True):
        for a, b in zip(r.parameters(), m.parameters(), strict=True):
            if cfg.optimizer == "sgd":
                assert torch.equal(a, b)  # bit for bit
            else:
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_state_dict_round_trip():
    _, pop = _setup()
    batches = [(torch.randn(8, 1, 40), torch.randint(0, 10, (8,))) for _ in range(pop.n_local)]
    pop.train_step(batches, 0.1, 0)
    state = pop.state_dict()
    _, other = _setup()
    other.load_state_dict(state)
    assert torch.equal(other.params, pop.params)
    assert torch.equal(other.opt_state["momentum_buffer"], pop.opt_state["momentum_buffer"])
    assert other.opt_steps == pop.opt_steps


def test_layer_index_shares_depth_within_a_module():
    cfg = TrainConfig.from_preset("tiny")
    model = build_model(cfg, (1, 40), 10)
    depth = layer_index(model)
    assert depth["conv1.weight"] == depth["conv1.bias"] == 0
    assert depth["fc.weight"] == max(depth.values())
    spec = flat_spec(model)
    assert spec.n_layers == 4 and spec.n_buffers == 0


def test_bn_buffers_are_views_and_update_in_training():
    cfg = TrainConfig.from_preset(
        "tiny", dataset="synthetic", model="resnet20", synthetic_shape="3x8x8"
    )
    pop = Population(cfg, (3, 8, 8), 10)
    assert pop.has_bn and pop.spec.n_buffers > 0
    before = pop.buffers.clone()
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(3)]
    pop.train_step(batches, 0.1, 0)
    assert not torch.equal(before, pop.buffers)  # running stats were written into the flat rows


def test_member_regularization_draws_per_member():
    _, pop = _setup(member_regularization=True, n_members=5)
    draws = {pop.regularization(m) for m in range(5)}
    assert len(draws) > 1
    _, plain = _setup()
    assert plain.regularization(0) == MemberRegularization()


# --- precision, memory format, compilation ---------------------------------------------------


def _batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 1, 40, generator=g), torch.randint(0, 10, (32,), generator=g)
    return [(x, y)] * n


def _train(pop: Population, steps: int = 5) -> list[float]:
    return [float(pop.train_step(_batches(pop.n_local, i), 0.05, i).mean()) for i in range(steps)]


def test_fp32_is_the_default_and_bit_identical_to_explicit_fp32():
    cfg, default = _setup()
    assert cfg.precision == "fp32" and default.amp_dtype is None and default.scaler is None
    _, explicit = _setup(precision="fp32")
    assert _train(default) == _train(explicit)
    assert torch.equal(default.params, explicit.params)
    assert not default.channels_last  # CPU: inputs keep their layout
    assert default.forwards == default.models  # compile is off by default


def test_bf16_autocasts_the_forward_and_keeps_fp32_state():
    _, fp32 = _setup()
    _, bf16 = _setup(precision="bf16")
    with bf16.autocast():
        assert bf16.models[0](torch.randn(4, 1, 40)).dtype == torch.bfloat16
    a, b = _train(fp32), _train(bf16)
    assert a != b and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 0.05
    assert bf16.params.dtype == bf16.grads.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in bf16.opt_state.values())


def _fp16_population() -> Population:
    # a config cannot ask for fp16 on a CPU (test below); the population itself runs it, so the
    # scaler path is tested here without a GPU
    cfg = TrainConfig.from_preset("tiny", precision="fp16")  # device=auto: checked at setup
    return Population(cfg, (1, 40), 10, "cpu")


def test_fp16_scaler_steps_normally_and_skips_an_overflow():
    pop = _fp16_population()
    assert pop.scaler is not None and pop.scaler.get_scale() == 2.0**16
    losses = _train(pop, 20)
    assert pop.opt_steps == 20 and losses[-1] < losses[0]
    before = pop.params.clone()
    state = copy.deepcopy(pop.state_dict())
    pop.grads.zero_()
    pop.models[0].fc.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    pop.train_step(_batches(pop.n_local), 0.05, 20)
    assert torch.equal(pop.params, before) and pop.opt_steps == 20  # the step was skipped
    assert pop.scaler.get_scale() == state["scaler"]["scale"] / 2  # and the scale backed off
    fresh = _fp16_population()
    fresh.load_state_dict(state)
    assert fresh.scaler.get_scale() == state["scaler"]["scale"]


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_fp16_on_a_cpu_is_one_line(tmp_path, device):
    from wash_sweeps.config import ConfigError
    from wash_sweeps.train import Placement, setup

    if device == "auto" and torch.cuda.is_available():
        pytest.skip("auto resolves to CUDA here")
    with pytest.raises(ConfigError, match=r"^precision='fp16': needs a CUDA device") as e:
        cfg = TrainConfig.from_preset("tiny", precision="fp16", device=device)
        setup(cfg, tmp_path / "run", None, Placement.local(cfg.n_members, writes=False))
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_compiled_forward_trains_like_the_eager_one(monkeypatch):
    # aot_eager traces through dynamo and AOTAutograd (the flat-row views as parameters) without
    # a C++ compiler; inductor itself is for the GPU
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, backend="aot_eager", **kw))
    _, eager = _setup()
    _, compiled = _setup(compile=True)
    assert compiled.forwards[0] is not compiled.models[0]
    a, b = _train(eager, 3), _train(compiled, 3)
    assert a == pytest.approx(b, rel=1e-5)
    assert torch.allclose(eager.params, compiled.params, atol=1e-6)
