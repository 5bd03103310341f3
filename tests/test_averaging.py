"""Soups: uniform soup of identical members is the identity; the greedy soup's rule."""

import torch

from wash_sweeps.averaging import greedy_soup, load_into, reestimate_bn, uniform_soup
from wash_sweeps.config import TrainConfig
from wash_sweeps.metrics import logits_of
from wash_sweeps.population import Population


def test_uniform_soup_of_identical_members_is_the_identity():
    cfg = TrainConfig.from_preset("tiny", same_init=True)
    pop = Population(cfg, (1, 40), 10)
    p, b = uniform_soup(pop.params, pop.buffers)
    assert torch.equal(p, pop.params[0])
    x = torch.randn(32, 1, 40)
    soup = load_into((p, b), pop.new_model())
    assert torch.equal(logits_of(soup, x, 16), logits_of(pop.models[0], x, 16))


def test_uniform_soup_of_rows():
    params = torch.arange(12.0).view(3, 4)
    p, _ = uniform_soup(params, torch.zeros(3, 0), rows=[0, 2])
    assert torch.equal(p, (params[0] + params[2]) / 2)


def test_greedy_soup_never_adds_a_member_that_lowers_held_out_accuracy():
    quality = {0: 0.9, 1: 0.5, 2: 0.8, 3: 0.85}

    def evaluate(rows):  # a soup is as good as the mean of its members, minus bad ones
        return sum(quality[r] for r in rows) / len(rows)

    chosen, score, trace = greedy_soup([quality[i] for i in range(4)], evaluate)
    assert chosen == [0]  # every addition lowers the mean here
    assert score == 0.9
    assert [t["member"] for t in trace] == [0, 3, 2, 1]  # visited best first
    scores = [t["score"] for t in trace if t["added"]]
    assert scores == sorted(scores)

    chosen, score, _ = greedy_soup([0.1, 0.2, 0.3], lambda rows: len(rows) / 3)
    assert chosen == [2, 1, 0] and score == 1.0


def test_bn_reestimation_recomputes_statistics_from_batches():
    cfg = TrainConfig.from_preset(
        "tiny", dataset="synthetic", model="resnet20", synthetic_shape="3x8x8"
    )
    pop = Population(cfg, (3, 8, 8), 10)
    model, p, b = pop.new_model()
    p.copy_(pop.params[0])
    b.fill_(123.0)  # garbage statistics
    x = torch.randn(64, 3, 8, 8) * 2 + 1
    reestimate_bn(model, [x[:32], x[32:]])
    assert not model.training
    first_bn_mean = b[: model.bn1.num_features]
    conv_out = torch.nn.functional.conv2d(x, model.conv1.weight, padding=1)
    torch.testing.assert_close(first_bn_mean, conv_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
