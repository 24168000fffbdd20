"""The transformer: shapes, nanoGPT's parameter count and names, and the KV cache."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from lit_nanogpt.model import GPT, ROW_SPLIT_MAX_ROWS, GPTConfig, Linear, unsplit
from tests.helpers import FIXTURES, NANOGPT_BABY, TINY, extend

REFERENCE_INIT = FIXTURES / "tiny_init.json"


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, "vocab_size": 65, **overrides})).eval()


def test_shapes_and_loss() -> None:
    model = tiny()
    x, y = torch.randint(0, 65, (2, 3, 16))
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, 65)
    # Untrained with small init: close to the uniform cross-entropy ln(65) = 4.17.
    assert loss is not None and abs(loss.item() - 4.174) < 0.1
    last, no_loss = model(x)
    assert last.shape == (3, 1, 65) and no_loss is None
    torch.testing.assert_close(last[:, 0], logits[:, -1])


def test_full_recipe_has_nanogpts_10_65m_parameters() -> None:
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False))
    assert round(model.get_num_params() / 1e6, 2) == 10.65  # nanoGPT prints "number of parameters: 10.65M"
    assert model.get_num_params() == 10_745_088 - 256 * 384


def test_state_dict_names_match_nanogpt() -> None:
    nanogpt = torch.load(NANOGPT_BABY / "ckpt.pt", map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**nanogpt["model_args"]))
    assert set(model.state_dict()) == set(nanogpt["model"])
    model.load_state_dict(nanogpt["model"])  # a plain copy, no renaming
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied


def init_summary(model: GPT) -> dict[str, dict]:
    """Per state-dict tensor: its shape, first values (where in the random stream its draws start), and
    sums that move if any value does, or if values swap places (``ramp`` weights each by its index)."""
    out = {}
    for name, t in model.state_dict().items():
        flat = t.detach().double().flatten()
        ramp = torch.arange(1, flat.numel() + 1, dtype=torch.float64) / flat.numel()
        out[name] = {"shape": list(t.shape), "first": flat[:4].tolist(), "sum": flat.sum().item(),
                     "sumsq": flat.square().sum().item(), "ramp": (flat * ramp).sum().item()}  # fmt: skip
    return out


def test_default_init_is_the_pre_options_model() -> None:
    """The reference was written by GPT before the speed-run options existed (commit 6f0d56d), seed 0:
    the defaults keep its state-dict keys, its init draws and their order (UPDATE_REFERENCE=1 rewrites it).
    Compared with a tolerance, not a hash: CPUs with other vector units may round normal_'s draws apart."""
    torch.manual_seed(0)
    got = init_summary(GPT(GPTConfig(**{**TINY, "vocab_size": 65, "bias": True})))
    if os.environ.get("UPDATE_REFERENCE"):
        REFERENCE_INIT.write_text(json.dumps({"torch": torch.__version__, "state_dict": got}, indent=1) + "\n")
    reference = json.loads(REFERENCE_INIT.read_text())["state_dict"]
    assert list(got) == list(reference)
    for name, summary in got.items():
        ref = reference[name]
        assert summary["shape"] == ref["shape"], name
        for key in ("first", "sum", "sumsq", "ramp"):
            assert summary[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), (name, key)


def test_bias_option_adds_biases() -> None:
    names = set(tiny(bias=True).state_dict())
    assert "transformer.h.0.attn.c_attn.bias" in names and "transformer.ln_f.bias" in names
    assert "transformer.h.0.attn.c_attn.bias" not in set(tiny(bias=False).state_dict())


def test_sequence_longer_than_block_size_is_refused() -> None:
    with pytest.raises(ValueError, match="block_size=16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("bad", [{"n_embd": 30, "n_head": 4}, {"n_layer": 0}, {"dropout": 1.0}])
def test_bad_config_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        GPTConfig(**{**TINY, "vocab_size": 65, **bad})


def test_cached_forward_equals_full_forward() -> None:
    model = tiny()
    x = torch.randint(0, 65, (2, 16))
    full, _ = model(x, x)
    prefill, past = model.forward_cached(x[:, :10])
    torch.testing.assert_close(prefill, full[:, :10], atol=1e-5, rtol=1e-5)
    for t in range(10, 16):  # one token at a time on top of the cache
        step, past = model.forward_cached(x[:, t : t + 1], past)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
    assert past[0][0].shape == (2, 2, 16, 16)  # (B, nh, T, hs)


@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (1.0, 1), (0.8, 5), (1.0, None)])
def test_cached_and_uncached_generation_give_the_same_tokens(temperature: float, top_k: int | None) -> None:
    model = tiny()
    prompt = torch.randint(0, 65, (1, 5))
    outs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(7)
        # 40 new tokens run well past block_size=16, through the sliding window.
        outs.append(extend(model, prompt, 40, temperature, top_k, use_cache=use_cache, generator=g))
    assert outs[0].shape == (1, 45)
    assert torch.equal(outs[0], outs[1])


@pytest.fixture
def two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def count_bmm(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of torch.bmm and torch.baddbmm from Python (the split's; attention's are inside torch)."""
    calls = [0]
    for name in ("bmm", "baddbmm"):
        op = getattr(torch, name)

        def counted(*args: Any, op: Callable[..., torch.Tensor] = op, **kwargs: Any) -> torch.Tensor:
            calls[0] += 1
            return op(*args, **kwargs)

        monkeypatch.setattr(torch, name, counted)
    return calls


def test_linear_draws_and_names_its_parameters_as_nn_linear() -> None:
    for bias in (False, True):
        torch.manual_seed(0)
        ours = Linear(192, 768, bias=bias).state_dict()
        torch.manual_seed(0)
        theirs = torch.nn.Linear(192, 768, bias=bias).state_dict()
        assert list(ours) == list(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("bias", [False, True])
def test_a_few_rows_against_a_large_weight_are_split_across_threads(
    bias: bool, two_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    layer = Linear(192, 768, bias=bias).eval()  # 147,456 weights: above ROW_SPLIT_MIN_WEIGHTS
    if bias:
        torch.nn.init.normal_(layer.bias)
    plain = torch.nn.Linear(192, 768, bias=bias)
    plain.load_state_dict(layer.state_dict())
    calls = count_bmm(monkeypatch)
    inputs = [torch.randn(shape) for shape in [(192,), (1, 192), (1, 1, 192), (4, 1, 192), (2, 3, 192)]]
    inputs += [torch.randn(192, ROW_SPLIT_MAX_ROWS).t()]  # (16, 192), not contiguous
    with torch.no_grad():
        for x in inputs:
            out = layer(x)
            assert out.shape == (*x.shape[:-1], 768)
            torch.testing.assert_close(out, plain(x), atol=2e-6, rtol=1e-6)
    assert calls[0] == len(inputs)
    # In eval mode with gradients (e.g. saliency): the split's gradients are nn.Linear's.
    x = torch.randn(1, 1, 192, requires_grad=True)
    layer(x).square().sum().backward()
    ours = [x.grad, layer.weight.grad]
    x.grad = None
    plain(x).square().sum().backward()
    assert calls[0] == len(inputs) + 1
    for a, b in zip(ours, [x.grad, plain.weight.grad], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_split_is_left_to_nn_linear_where_it_does_not_apply(
    two_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    big, small = Linear(192, 768).eval(), Linear(128, 512).eval()  # small: 65,536 weights, below the line
    odd = Linear(192, 769).eval()  # 769 output rows do not split into 2 blocks
    strided = Linear(192, 768).eval()
    strided.weight = torch.nn.Parameter(torch.randn(192, 768).t())  # (768, 192), not contiguous
    calls = count_bmm(monkeypatch)
    row, rows = torch.randn(1, 1, 192), torch.randn(1, ROW_SPLIT_MAX_ROWS + 1, 192)
    with torch.no_grad():
        small(torch.randn(1, 1, 128))  # too small
        big(rows)  # too many rows
        odd(row)
        torch.testing.assert_close(strided(row), row @ strided.weight.T + strided.bias)
        assert big(torch.empty(0, 192)).shape == (0, 768)  # no rows
        with pytest.raises(RuntimeError, match="cannot be multiplied"):  # the wrong width: F.linear's own error
            big(torch.randn(1, 100))
        big.train()(row)  # training
        big.eval()
        big.double()(row.double())  # float64
        big.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            big(row)
        torch.jit.trace(big, row, check_trace=False)  # tracing (the ONNX exporter's path)
        with unsplit():
            big(row)
        torch.set_num_threads(1)
        big(row)  # one thread: nothing to split across
    assert calls[0] == 0
    torch.set_num_threads(2)
    with torch.no_grad():
        big(row)
    assert calls[0] == 1  # and the same layer splits a row it may


def test_decoding_with_the_split_gives_the_tokens_it_gives_without(
    two_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny(n_embd=192, n_head=4, n_layer=1, block_size=32)  # its 4x MLP weights are split
    prompts = torch.randint(0, 65, (3, 5))  # three rows decoded together

    def sample() -> torch.Tensor:  # 40 new tokens: past block_size too, through the sliding window
        return extend(model, prompts, 40, 0.8, None, generator=torch.Generator().manual_seed(3))

    calls = count_bmm(monkeypatch)
    split = sample()
    assert calls[0] > 0
    calls[0] = 0
    with unsplit():
        assert torch.equal(sample(), split)
    assert calls[0] == 0


def test_dropout_runs_in_training_only() -> None:
    """Evaluation and decoding skip the dropout modules (identity there; each call still costs an op)."""
    model = tiny(dropout=0.2)
    calls = [0]
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    idx = torch.randint(0, 65, (2, 8))
    keys = [torch.zeros(2, 2, 16, 16) for _ in range(2)]
    values = [torch.zeros(2, 2, 16, 16) for _ in range(2)]
    with torch.no_grad():
        evaluated = model(idx, idx)[1]
        model.forward_cached(idx)
        model.decode_in_place(idx[:, :1], torch.tensor([0, 3]), keys, values, torch.tensor([0, 1]))
    assert calls[0] == 0
    model.train()
    torch.manual_seed(1)
    trained = model(idx, idx)[1]
    assert calls[0] == 1 + 2 * 2  # the embeddings', then each block's attention and MLP
    assert not torch.equal(trained, evaluated)  # dropout at 0.2 changed the loss
