"""Checks on any nn.Module (tvtheory.user_model): a transformers ViT and BERT, subsets, frozen parameters and
buffers, and the probe that tells what breaks second derivatives (each shown able to fail).
"""

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

from tvtheory.losses import cross_entropy
from tvtheory.optimizers import OptimizerSpec
from tvtheory.theorems import verify_t1
from tvtheory.user_model import (
    SecondDerivativeError,
    check_module,
    check_second_derivatives,
    format_verdicts,
    network_activation,
    pack_inputs,
    select_parameters,
    user_problem,
)

VIT = dict(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
           intermediate_size=32, num_labels=3)


def tiny_vit(attn="eager", seed=0):
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**VIT, attn_implementation=attn))


def images(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(n, 1, 8, 8, generator=g)}, torch.randint(0, 3, (n,), generator=g)


class SmallNet(nn.Module):
    """Linear -> BatchNorm (running statistics: buffers) -> tanh -> Linear, the first layer frozen."""

    def __init__(self, act=None):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), act or nn.Tanh())
        self.head = nn.Linear(7, 3)
        self.encoder[0].weight.requires_grad_(False)
        with torch.no_grad():
            self.encoder[1].running_mean.normal_()
            self.encoder[1].running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.head(self.encoder(x))


def small_data(n=20, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_a_transformers_vit_gets_the_clis_verdicts():
    x, y = images()
    problem = user_problem(tiny_vit(), "ce", x, y, dtype=torch.float64)
    verdicts = check_module(problem, lr=0.1, epochs=3, spec=OptimizerSpec("sgd", 0.1))
    assert list(verdicts) == ["HVP", "T1", "C1", "T2", "T3", "T4", "optimizer"]
    assert all(v.holds for name, v in verdicts.items() if name != "T4")
    assert verdicts["T4"].holds is None and "ViTForImageClassification is another network" in verdicts["T4"].message
    assert "float32 (softmax)" in verdicts["HVP"].message          # transformers' eager softmax runs in float32
    assert "T1: holds" in format_verdicts(verdicts)


def test_a_subset_of_parameters_is_theta_and_the_rest_stays_fixed():
    x, y = images()
    model = tiny_vit()
    problem = user_problem(model, "ce", x, y, select="vit.layers.")
    named = dict(model.named_parameters())
    chosen = select_parameters(model, "vit.layers.")
    assert problem.num_params == sum(named[n].numel() for n in chosen) < sum(p.numel() for p in model.parameters())
    assert torch.equal(problem.theta0, torch.cat([named[n].detach().reshape(-1) for n in chosen]))
    with torch.no_grad():
        expected = cross_entropy(model.eval()(**x).logits, y)
    assert torch.equal(problem.objective(problem.theta0), expected)
    assert verify_t1(problem, 0.1).holds
    with pytest.raises(ValueError, match="no trainable parameter .* matches select='encoder.'; its trainable"):
        user_problem(model, "ce", x, y, select="encoder.")


def test_frozen_parameters_and_buffers_are_constants_of_the_loss():
    x, y = small_data()
    model = SmallNet()
    problem = user_problem(model, "ce", x, y)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert problem.num_params == sum(p.numel() for p in trainable)       # the frozen weight is not in theta
    with torch.no_grad():
        expected = cross_entropy(model.eval()(x), y)                    # eval: BatchNorm on its running statistics
        batch_stats = cross_entropy(model.train()(x), y)                # a loss that used the batch statistics
    model.eval()
    # The objective (functional_call over views of theta) and the module's own forward are two float paths: on some
    # CPUs (an AVX-512/AMX Xeon here) their sums run in another order and the loss differs in its last bit (1 ulp
    # in float32, 2 in float64). Equal up to 4 ulps of the loss; a frozen weight or buffer taken for a variable, or
    # BatchNorm on batch statistics, moves it by far more (the asserts after this one).
    ulps = 4 * torch.finfo(expected.dtype).eps * abs(float(expected))
    assert abs(float(problem.objective(problem.theta0)) - float(expected)) <= ulps
    assert abs(float(batch_stats) - float(expected)) > 1e3 * ulps
    moved = problem.theta0 + 0.1
    assert abs(float(problem.objective(moved)) - float(expected)) > 1e3 * ulps   # theta does enter the loss
    assert model.encoder[0].weight.requires_grad is False and isinstance(model.encoder[0].weight, nn.Parameter)


def test_dict_inputs_with_token_ids_bert():
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2, attn_implementation="eager"))
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 50, (12, 6), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    labels = torch.randint(0, 2, (12,), generator=g)
    problem = user_problem(bert, "ce", inputs, labels, select="bert.encoder.", dtype=torch.float64)
    with torch.no_grad():
        expected = cross_entropy(bert.double().eval()(**inputs).logits, labels)
    assert torch.equal(problem.objective(problem.theta0), expected)
    assert verify_t1(problem, 0.05).holds
    assert check_second_derivatives(problem).holds


def test_integer_inputs_must_be_exact_in_the_working_precision():
    x, fields = pack_inputs({"ids": torch.tensor([[3, 2 ** 24]])}, torch.float32)
    assert x.dtype == torch.float32 and fields[0].shape == (2,)
    with pytest.raises(ValueError, match="cannot represent exactly; use dtype=torch.float64"):
        pack_inputs({"ids": torch.tensor([[2 ** 24 + 1]])}, torch.float32)


def test_fused_attention_is_named_with_its_fix():
    x, y = images()
    problem = user_problem(tiny_vit("sdpa"), "ce", x, y)
    assert verify_t1(problem, 0.1).holds                               # first derivatives still work
    with pytest.raises(SecondDerivativeError, match='attn_implementation="eager"') as err:
        check_second_derivatives(problem)
    assert "\n" not in str(err.value)


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.act = nn.Linear(5, 6), nn.Linear(6, 3), nn.Tanh()

    def forward(self, x):
        h = self.act(self.a(x))
        h.mul_(2.0)                      # tanh's backward needs its output, now overwritten
        return self.b(h)


def test_an_in_place_operation_is_named_with_its_fix():
    x, y = small_data()
    with pytest.raises(SecondDerivativeError, match="in-place operation breaks differentiation through InPlace"):
        check_second_derivatives(user_problem(InPlace(), "ce", x, y))


class Sin(torch.autograd.Function):
    """sin with a first derivative; with ``detached`` its backward hides the second derivative -sin."""

    detached = True

    @staticmethod
    def forward(x):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])
        ctx.x = inputs[0]

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (torch.cos(x).detach() if Sin.detached else torch.cos(x))

    @staticmethod
    def jvp(ctx, t):
        return t * torch.cos(ctx.x)


class SinNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(Sin.apply(self.a(x)))


def test_a_wrong_second_derivative_is_caught_by_the_finite_difference(monkeypatch):
    x, y = small_data()
    problem = user_problem(SinNet(), "ce", x, y, activation="tanh")   # sin: C^2, no module to find it by
    with pytest.raises(SecondDerivativeError, match="disagree with a finite difference"):
        check_second_derivatives(problem)
    monkeypatch.setattr(Sin, "detached", False)
    assert check_second_derivatives(problem).margin <= 1                # the same op, differentiable: passes


def test_relu_networks_are_not_c2_and_unknown_activations_must_be_named():
    x, y = small_data()
    problem = user_problem(SmallNet(nn.ReLU()), "ce", x, y)
    assert not problem.act.is_c2 and "ReLU" in problem.act.name
    verdicts = check_module(problem, lr=0.1, epochs=2)
    assert "HVP" not in verdicts and verdicts["T1"].holds
    assert [verdicts[k].holds for k in ("T2", "T3", "T4")] == [None, None, None]
    with pytest.raises(ValueError, match="cannot tell whether SinNet is C\\^2.*pass activation="):
        network_activation(SinNet())


def test_bad_labels_are_refused():
    x, y = small_data()
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        user_problem(SmallNet(), "ce", x, y + 3)
    with pytest.raises(ValueError, match="20 inputs but 19 labels"):
        user_problem(SmallNet(), "ce", x, y[:19])
