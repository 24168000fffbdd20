#!/usr/bin/env python
"""The parts issue 19 changed to bring the CPU recipes under nanoGPT's wall time, each beside what it replaced.

    python benchmarks/bench_parts.py adamw [--rounds 8] [--steps 100]
    python benchmarks/bench_parts.py relu2 [--rounds 8] [--steps 20]
    python benchmarks/bench_parts.py muon [--rounds 8]
    python benchmarks/bench_parts.py gc [--pairs 5]
    python benchmarks/bench_parts.py gemv [--rounds 5] [--tokens 200] [--batches 1 4 16] [--other-line 262144]

- ``adamw``: the CPU recipe's model (4 layers, 4 heads, 128 wide, context 64, batch 12), nanoGPT's two
  weight-decay groups. First ``optimizer.step()`` alone with torch's for-loop AdamW (torch's default on CPU,
  which nanoGPT's CPU recipe gets), its foreach and its fused kernel; then whole training steps (forward,
  backward, clipping, step) with the for-loop and the fused kernel, alternating.
- ``relu2``: the fast recipe's model (2 layers, rotary, QK-norm, ReLU², untied head, batch 32), forward and
  backward, with ReLU² written ``relu(x).square()`` (before) and ``r * r`` (now), alternating.
- ``muon``: one Newton-Schulz orthogonalisation of the fast recipe's blocks (8 of 128x128, 4 of 128x512),
  5 iterations, written ``a x + (b G + c G G) x`` (before) and with ``baddbmm`` (now, ``lit_nanogpt.optim``).
- ``gc``: ``import lit_nanogpt.cli`` (torch and Lightning) in a fresh process, then exit: as CPython does by
  default, and with the collector paused during the import and everything frozen after it and at exit, as
  ``lit_nanogpt/__main__.py`` does. The import's time, the full collections during it (number and seconds),
  the time from the last line to the process's end, and the whole process, alternating.
- ``gemv``: one row times each weight of the 10.65M model (and of the CPU recipe's 128-wide model) with
  ``nn.Linear`` (MKL's matrix-vector product) and with ``lit_nanogpt.model.Linear`` (the rows split into one
  ``bmm`` batch entry per thread), with the largest difference between them; then ``generate`` on the 10.65M
  model (``TorchBackend``, KV cache, prompts of 6 tokens, temperature 0.8, top-k 200, seed 1337), with
  ``--batches`` rows decoded together, with the split off and on, and in the same rounds the machine's limit
  (``bench_generate.memory_limit``: one numpy matrix-vector product over the model's 42.6 MB of weights, best
  of 30), each as a fraction of it (for several rows: their tokens/s together against one row's limit);
  ``--other-line N`` adds an arm with ``ROW_SPLIT_MIN_WEIGHTS`` at N.

Every mode prints the machine line, per-round figures, medians and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from harness import ROOT, Results, alternate, format_list, machine_line, print_table

if TYPE_CHECKING:
    from lit_nanogpt.model import GPT


def _ms_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def _report(results: Results, arms: list[str], base: str, unit: str) -> None:
    rows = [[arm, f"{results.median(arm):.3f}", format_list(results.values(arm), 3),
             "" if arm == base else f"{results.ratio(arm, base):.3f}"] for arm in arms]  # fmt: skip
    print_table(["arm", f"median {unit}", "rounds", f"/ {base} (median of rounds)"], rows)


# ---- adamw ----
def adamw(rounds: int, steps: int) -> None:
    import torch

    from lit_nanogpt.model import GPT, GPTConfig

    config = GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)

    def build(**kind: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = GPT(config)
        params = list(model.parameters())
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip
        return model, torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), **kind)

    kinds = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    built = {name: build(**kind) for name, kind in kinds.items()}
    for model, _ in built.values():
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
    step_only = alternate({name: (lambda i, o=opt: _ms_per_call(o.step, 300)) for name, (_, opt) in built.items()},
                          rounds, show=None)  # fmt: skip
    print("optimizer.step() alone, ms (300 calls a round):")
    _report(step_only, list(kinds), "for-loop", "ms")

    batches = torch.randint(0, 65, (50, 12, 65), generator=torch.Generator().manual_seed(0))
    trained = {name: build(**kinds[name]) for name in ("for-loop", "fused")}

    def train(name: str, n: int) -> float:
        model, optimizer = trained[name]
        start = time.perf_counter()
        for i in range(n):
            xy = batches[i % len(batches)]
            _, loss = model(xy[:, :-1], xy[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / n * 1e3

    for name in trained:
        train(name, 10)  # first-use allocations
    whole = alternate({name: (lambda i, n=name: train(n, steps)) for name in trained}, rounds, show=None)
    print(f"\nwhole training step, ms ({steps} steps a round):")
    _report(whole, list(trained), "for-loop", "ms")


# ---- relu2 ----
def relu2(rounds: int, steps: int) -> None:
    import torch
    import torch.nn.functional as F
    import yaml

    import lit_nanogpt.model as model_module
    from lit_nanogpt.model import GPT, GPTConfig

    recipe = yaml.safe_load((ROOT / "configs" / "shakespeare_char_cpu_fast.yaml").read_text())
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**recipe["model"]["arch"], "vocab_size": 65}))
    batches = torch.randint(0, 65, (20, recipe["data"]["batch_size"], 65), generator=torch.Generator().manual_seed(0))
    forms = {"relu(x).square()": lambda self, x: F.relu(x).square(), "r * r": model_module.ReLUSquared.forward}

    def run(form: str) -> float:
        model_module.ReLUSquared.forward = forms[form]  # type: ignore[method-assign]
        start = time.perf_counter()
        for i in range(steps):
            xy = batches[i % len(batches)]
            _, loss = model(xy[:, :-1], xy[:, 1:])
            loss.backward()
            model.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / steps * 1e3

    try:
        for form in forms:
            run(form)
        results = alternate({form: (lambda i, f=form: run(f)) for form in forms}, rounds, show=None)
    finally:
        model_module.ReLUSquared.forward = forms["r * r"]  # type: ignore[method-assign]
    print(f"forward + backward of the fast recipe's model, ms ({steps} steps a round):")
    _report(results, list(forms), "relu(x).square()", "ms")


# ---- muon ----
def muon(rounds: int) -> None:
    import torch

    from lit_nanogpt.optim import NS_COEFFICIENTS, orthogonalize_all

    def before(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
        """lit_nanogpt.optim.orthogonalize before this change: each scaling and sum its own operation."""
        a, b, c = NS_COEFFICIENTS
        x = g.float()
        tall = x.size(-2) > x.size(-1)
        x = x.mT if tall else x
        x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
        for _ in range(steps):
            gram = x @ x.mT
            x = a * x + (b * gram + c * gram @ gram) @ x
        return x.mT if tall else x

    import lit_nanogpt.optim as optim_module

    now = optim_module.orthogonalize
    torch.manual_seed(0)
    blocks = [torch.randn(128, 128) for _ in range(8)] + [torch.randn(512, 128), torch.randn(128, 512)] * 2
    forms = {"a x + (b G + c G G) x": before, "baddbmm": now}

    def with_form(form: Callable[..., torch.Tensor], fn: Callable[[], object]) -> object:
        optim_module.orthogonalize = form
        try:
            return fn()
        finally:
            optim_module.orthogonalize = now

    def run(form: Callable[..., torch.Tensor]) -> float:
        return float(with_form(form, lambda: _ms_per_call(lambda: orthogonalize_all(blocks, 5), 20)))  # type: ignore[arg-type]

    for form in forms.values():
        run(form)
    results = alternate({name: (lambda i, f=form: run(f)) for name, form in forms.items()}, rounds, show=None)
    outputs = [with_form(form, lambda: orthogonalize_all(blocks, 5)) for form in forms.values()]
    diff = max(float((p - q).abs().max()) for p, q in zip(*outputs, strict=True))  # type: ignore[call-overload]
    print("orthogonalize_all of the fast recipe's blocks (5 iterations), ms (20 calls a round):")
    _report(results, list(forms), "a x + (b G + c G G) x", "ms")
    print(f"largest difference between the two results: {diff:.2g}")


# ---- gc ----
_GC_CHILD = """
import gc, json, sys, time
start = time.perf_counter()
passes = []
def watch(phase, info, t=[0.0]):
    if info["generation"] != 2:
        return
    if phase == "start":
        t[0] = time.perf_counter()
    else:
        passes.append(time.perf_counter() - t[0])
gc.callbacks.append(watch)
paused = sys.argv[1] == "paused"
if paused:
    gc.disable()
import lit_nanogpt.cli
if paused:
    gc.freeze()
    gc.enable()
imported = time.perf_counter() - start
gc.callbacks.remove(watch)
if paused:
    gc.freeze()
print(json.dumps({"import s": imported, "full collections": len(passes), "their s": sum(passes)}), flush=True)
"""


def gc_mode(pairs: int) -> None:
    def run(kind: str) -> dict[str, float]:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _GC_CHILD, kind], cwd=ROOT, capture_output=True, text=True)
        end = time.perf_counter()
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        # The child prints its line just before it ends: what follows is interpreter shutdown (and the start's
        # few ms before its clock, the same in both arms).
        return {**figures, "process s": end - start, "after the last line s": end - start - figures["import s"]}

    results = alternate({"default": lambda i: run("default"), "paused+frozen": lambda i: run("paused")}, pairs,
                        show=None)  # fmt: skip
    keys = ["import s", "full collections", "their s", "after the last line s", "process s"]
    rows = [[key, *(f"{results.median(arm, key):.3f}" for arm in results.arms),
             f"{results.ratio('paused+frozen', 'default', key):.3f}" if key != "full collections" else ""]
            for key in keys]  # fmt: skip
    print("python -c 'import lit_nanogpt.cli' then exit, medians:")
    print_table(["", "default", "paused+frozen", "ratio (median of pairs)"], rows)
    for arm in results.arms:
        print(f"{arm}: process s per pair {format_list(results.values(arm, 'process s'))}")


# ---- gemv ----
def gemv(rounds: int, tokens: int, batches: list[int], other_line: int | None) -> None:
    import torch

    import lit_nanogpt.model as model_module
    from lit_nanogpt.model import GPT, GPTConfig, Linear

    split_from = model_module.ROW_SPLIT_MIN_WEIGHTS
    print(f"torch threads: {torch.get_num_threads()}; one row times each weight, us a call (500 calls a round):")
    rows = []
    for out_f, in_f in [(1152, 384), (384, 384), (1536, 384), (384, 1536), (384, 128), (512, 128), (128, 512)]:
        torch.manual_seed(0)
        layer, x = Linear(in_f, out_f, bias=False).eval(), torch.randn(1, 1, in_f)
        plain = torch.nn.Linear(in_f, out_f, bias=False).eval()
        plain.weight = layer.weight
        with torch.no_grad():
            diff = float((layer(x) - plain(x)).abs().max())
            arms = {name: (lambda i, f=f, x=x: _ms_per_call(lambda: f(x), 500) * 1e3)
                    for name, f in (("nn.Linear", plain), ("Linear", layer))}  # fmt: skip
            results = alternate(arms, rounds, show=None)
        threads = torch.get_num_threads()  # Linear's own conditions for this row
        split = layer.weight.numel() >= split_from and threads > 1 and out_f % threads == 0
        rows.append([f"{out_f}x{in_f}", f"{layer.weight.numel() * 4 / 1e6:.2f}", "yes" if split else "no",
                     f"{results.median('nn.Linear'):.1f}", f"{results.median('Linear'):.1f}",
                     f"{results.ratio('Linear', 'nn.Linear'):.3f}", f"{diff:.1e}"])  # fmt: skip
    print_table(["weight", "MB", "split", "nn.Linear us", "Linear us", "ratio", "max abs diff"], rows)

    torch.manual_seed(0)
    config = GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.0, bias=False)
    model = GPT(config).eval()
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())  # fp32, as bench_generate counts them
    for batch in batches:
        _decode_rounds(model, batch, tokens, rounds, weight_bytes, other_line)


def _decode_rounds(
    model: GPT, batch: int, tokens: int, rounds: int, weight_bytes: int, other_line: int | None = None
) -> None:
    """``generate`` of ``batch`` rows together with ``Linear``'s split off and on (and, with ``other_line``, with
    ``ROW_SPLIT_MIN_WEIGHTS`` at that value), and the limit, alternating."""
    from bench_generate import memory_limit

    import lit_nanogpt.model as model_module
    from lit_nanogpt.decoding import Sampler, TorchBackend, generate, seeded
    from lit_nanogpt.model import unsplit

    backend, texts = TorchBackend(model, max_batch=batch), {}
    prompts = [[1 + i, 2, 3, 4, 5, 6] for i in range(batch)]
    line = model_module.ROW_SPLIT_MIN_WEIGHTS

    @contextlib.contextmanager
    def split_from(weights: int) -> Iterator[None]:
        model_module.ROW_SPLIT_MIN_WEIGHTS = weights
        try:
            yield
        finally:
            model_module.ROW_SPLIT_MIN_WEIGHTS = line

    def decode(arm: str, context: contextlib.AbstractContextManager[None]) -> float:
        start = time.perf_counter()
        with context:
            texts[arm] = generate(backend, prompts, tokens, Sampler(0.8, 200, generator=seeded(1337)))
        return tokens * batch / (time.perf_counter() - start)

    contexts: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
        "unsplit": unsplit, "split": contextlib.nullcontext}  # fmt: skip
    if other_line is not None:
        contexts[f"split from {other_line}"] = lambda: split_from(other_line)
    for arm, context in contexts.items():  # warm every arm
        decode(arm, context())
    arms: dict[str, Callable[[int], float]] = {
        arm: (lambda i, arm=arm, context=context: decode(arm, context())) for arm, context in contexts.items()
    }
    arms["limit"] = lambda i: memory_limit(weight_bytes)["tokens_per_s"]
    results = alternate(arms, rounds, show=None)
    same = all(texts[arm] == texts["unsplit"] for arm in contexts)
    print(f"\ngenerate, 10.65M model, {batch} row(s) decoded together, {tokens} tokens each, tokens/s (all rows); "
          f"limit = {weight_bytes / 1e6:.1f} MB of weights read once per step, as tokens/s of one row; "
          f"split from {line} weights; the same tokens every way: {same}")  # fmt: skip
    rows = [[arm, f"{results.median(arm):.1f}", format_list(results.values(arm), 1),
             "" if arm == "limit" else f"{results.ratio(arm, 'limit'):.3f}",
             f"{results.ratio(arm, 'unsplit'):.3f}" if arm.startswith("split") else ""] for arm in arms]  # fmt: skip
    print_table(["arm", "median tokens/s", "rounds", "/ limit (median of rounds)", "/ unsplit"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("adamw")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=100)
    p = sub.add_parser("relu2")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p = sub.add_parser("muon")
    p.add_argument("--rounds", type=int, default=8)
    p = sub.add_parser("gc")
    p.add_argument("--pairs", type=int, default=5)
    p = sub.add_parser("gemv")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--other-line", type=int, help="also decode with ROW_SPLIT_MIN_WEIGHTS at this value")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    if args.mode == "adamw":
        adamw(args.rounds, args.steps)
    elif args.mode == "relu2":
        relu2(args.rounds, args.steps)
    elif args.mode == "muon":
        muon(args.rounds)
    elif args.mode == "gemv":
        gemv(args.rounds, args.tokens, args.batches, args.other_line)
    else:
        gc_mode(args.pairs)


if __name__ == "__main__":
    main()
