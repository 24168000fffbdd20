#!/usr/bin/env python
"""Generation: what ``lit-nanogpt generate`` prints against nanoGPT's method, tokens/s of every path in one
process, and what the int8 weights and the ``half`` window cost in quality.

    python benchmarks/bench_generate.py cli [--repeats 5] [--tokens 200] [--checkpoint CKPT] [--out F.json]
    python benchmarks/bench_generate.py speed [--repeats 3] [--lengths 200 500] [--out F.json]
    python benchmarks/bench_generate.py quality [--val_tokens 4000] [--out F.json]
    python benchmarks/bench_generate.py spin [--rounds 7] [--tokens 200] [--busy 0 1 2] [--spins 0 10 25 100]
                                             [--model N_LAYER,N_HEAD,N_EMBD,BLOCK_SIZE] [--out F.json]

Model (``cli``, ``speed``): nanoGPT's Shakespeare-char shape, 10.65M parameters (6 layers, 6 heads, 384
wide, block 256, vocab 65), random weights (``torch.manual_seed(0)``; the time per token does not depend
on their values), written as nanoGPT's own ``ckpt.pt``/``meta.pkl`` and imported with ``import_nanogpt``;
``--tiny`` (2 layers, 32 wide, block 64) for a smoke test. Batch 1, prompt "ROMEO:", temperature 0.8,
top_k 200 (sample.py's defaults), seed 1337.

- ``cli``: the real ``python -m lit_nanogpt generate`` in a process of its own, the tokens/s it prints
  (generation alone) and its ``Loaded ... in S s`` line: ``--checkpoint`` (PyTorch, KV cache, fp32),
  ``--onnx DIR`` (onnxruntime fp32; also with ``--threads 1``) and ``--onnx DIR --int8 true``; each
  alternated with nanoGPT's method (sample.py's loop, written here against our ``GPT``: no cache, the whole
  context cropped to block_size forwarded again per token, fp32 eager, in this process, the model warmed
  beforehand);
  and, in the same rounds, the machine's memory limit (``memory_limit``: one matrix-vector product over the
  model's fp32 weight bytes, numpy and torch, best of 30: a decode step reads every weight once); medians,
  per-round ratios, each path as a fraction of the limit and issue 19's targets (checkpoint >= 40%, ONNX
  fp32 >= 60%, int8 >= 1.5x fp32). nanoGPT's ratio is reported, not targeted.
- ``speed``: in this process, alternating, every round: ``GPT.generate`` without and with the KV
  cache (2 torch threads and 1), the export opened with ``open_export`` in fp32 and int8 (each also on one
  thread, ``generate --threads 1``), the memory limit (each path as a fraction of it, per round), and past
  block_size the ``half`` window; best and median tokens/s. Then one full-window forward of the
  exported graphs, the export's time (fp32 only, and with int8), graph sizes and parity.
- ``spin``: what the ONNX decode's threads and their spin-waiting cost or gain, idle and beside busy
  processes (``--busy N``: N other processes, each a Python loop that never sleeps, as another tenant's job
  would be). In this process, alternating, every round: ``generate`` of 200 tokens through ``ExportedGPT``
  in fp32 and int8 on one thread, and on 2 threads spinning at most ``--spins`` microseconds each
  (``onnxrt.SPIN_US``; 0 is no spinning) and without a bound (onnxruntime's own spin, and ``--threads 2``
  before 1.26), with the memory limit; medians, per-round ratios to one thread, fractions of the limit.
  ``--model`` another shape (random weights, vocab 65): where ``onnxrt.DECODE_THREADS_FROM`` was placed.
- ``quality``: nanoGPT's baby model (tests/fixtures/nanogpt_baby, trained, block 64): loss over every
  non-overlapping window of the validation split in PyTorch and through the fp32 and int8 ``full``
  graphs (onnxruntime), and the stream NLL of the first ``--val_tokens`` characters fed token by token
  with the exact and the ``half`` window.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import ROOT, alternate, cli, format_list, machine_info, machine_line, print_table, run_process

from lit_nanogpt.checkpoint import import_nanogpt, load_model
from lit_nanogpt.data import CharDataModule
from lit_nanogpt.decoding import Backend, Sampler, TorchBackend, generate, nll, sample_next
from lit_nanogpt.export import ExportedGPT, ExportSettings, export_model, open_export
from lit_nanogpt.model import GPT, GPTConfig, unsplit
from lit_nanogpt.sampling import SEPARATOR
from lit_nanogpt.text import SHIPPED_CORPUS, Vocabulary

SHAKESPEARE_CHAR = GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.0, bias=False)
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=65, dropout=0.0, bias=False)
BABY = ROOT / "tests" / "fixtures" / "nanogpt_baby"
PROMPT, SEED, TEMPERATURE, TOP_K = "ROMEO:", 1337, 0.8, 200
# Variant -> the options after ``lit-nanogpt generate``; {ckpt} and {onnx} are filled in. Targets: issue 19's,
# as a fraction of the machine's memory limit (int8: 1.5x the fp32 export's tokens/s, checked in the summary);
# ``--threads 1`` (the steady choice on a busy CPU, and the default before the spin was bounded) is reported only.
VARIANTS = {
    "pytorch_cache_fp32": (["--checkpoint", "{ckpt}"], 0.4),
    "onnx_fp32": (["--onnx", "{onnx}", "--backend", "cpu"], 0.6),
    "onnx_fp32_1_thread": (["--onnx", "{onnx}", "--backend", "cpu", "--threads", "1"], None),
    "onnx_int8": (["--onnx", "{onnx}", "--int8", "true"], None),
}
TOKENS_LINE = re.compile(r"^(\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\)$", re.M)
LOADED_LINE = re.compile(r"^Loaded .* in ([\d.]+) s$", re.M)


def random_checkpoint(work: Path, config: GPTConfig) -> Path:
    """Random weights (seed 0) through nanoGPT's own files and import-nanogpt: what a nanoGPT run would give."""
    torch.manual_seed(0)
    model = GPT(config)
    chars = Vocabulary.from_text(SHIPPED_CORPUS.read_text(encoding="utf-8")).chars  # Tiny Shakespeare's 65
    torch.save({"model": model.state_dict(), "model_args": vars(config)}, work / "ckpt.pt")
    with (work / "meta.pkl").open("wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                     "stoi": {c: i for i, c in enumerate(chars)}}, f)  # fmt: skip
    return import_nanogpt(work / "ckpt.pt", work / "meta.pkl", work / "model.ckpt")


def prompt_ids(vocab: Vocabulary) -> torch.Tensor:
    return torch.from_numpy(vocab.encode(PROMPT))[None]  # (1, T)


# ---- cli ----
def memory_limit(weight_bytes: int, tries: int = 30) -> dict:
    """The machine's decoding limit: a decode step reads every fp32 weight once, so one matrix-vector product
    over as many bytes (numpy, and torch with its threads), best of ``tries``, bounds tokens/s from above."""
    rows = weight_bytes // 4 // 384
    w, x = np.random.default_rng(0).random((rows, 384), dtype=np.float32), np.ones(384, dtype=np.float32)
    tw, tx = torch.from_numpy(w), torch.from_numpy(x)
    best = {"numpy": float("inf"), "torch": float("inf")}
    for _ in range(tries):
        best["numpy"] = min(best["numpy"], _seconds(lambda: w @ x))
        best["torch"] = min(best["torch"], _seconds(lambda: tw @ tx))
    fastest = min(best.values())
    return {
        "tokens_per_s": 1.0 / fastest,
        "ms": {k: v * 1e3 for k, v in best.items()},
        "gb_per_s": weight_bytes / fastest / 1e9,
    }


@torch.no_grad()
def nanogpt_method(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """nanoGPT's sampling: every token forwards the whole context again (cropped to block_size); no cache. Its
    products as nanoGPT's ``nn.Linear`` computes them (``lit_nanogpt.model.unsplit``)."""
    with unsplit():
        return _nanogpt_method(model, idx, max_new_tokens)


def _nanogpt_method(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size :])  # (B, 1, V): the last position, as nanoGPT's
        idx = torch.cat((idx, sample_next(logits[:, -1, :], TEMPERATURE, TOP_K)), dim=1)  # (B, T + 1)
    return idx


def time_nanogpt_method(model: GPT, vocab: Vocabulary, tokens: int) -> dict:
    """tokens/s of nanoGPT's method, and its text (prompt and continuation), from sample.py's seed."""
    torch.manual_seed(SEED)
    start = time.perf_counter()
    out = nanogpt_method(model, prompt_ids(vocab), tokens)
    return {"tokens_per_s": tokens / (time.perf_counter() - start), "text": vocab.decode(out[0])}


def run_generate(options: list[str], tokens: int) -> dict:
    """``python -m lit_nanogpt generate OPTIONS``: the tokens/s it prints, its load time, and its text."""
    cmd = cli("generate", *options, f"--prompt={PROMPT}", f"--max_new_tokens={tokens}", f"--temperature={TEMPERATURE}",
              f"--top_k={TOP_K}", f"--seed={SEED}", "--num_samples=1")  # fmt: skip
    done = run_process(cmd, cwd=ROOT)
    rate, loaded = TOKENS_LINE.search(done.stderr), LOADED_LINE.search(done.stderr)
    if rate is None or loaded is None or int(rate.group(1)) != tokens:
        raise SystemExit(f"{' '.join(cmd)} printed no tokens/s or Loaded line:\n{done.stderr[-2000:]}")
    return {"tokens_per_s": float(rate.group(2)), "load_s": float(loaded.group(1)),
            "text": done.stdout.split("\n" + SEPARATOR)[0]}  # fmt: skip


def bench_cli(work: Path, args: argparse.Namespace) -> dict:
    if args.checkpoint is None:
        ckpt, weights = random_checkpoint(work, TINY if args.tiny else SHAKESPEARE_CHAR), "random (seed 0)"
    else:
        ckpt, weights = Path(args.checkpoint), f"trained: {args.checkpoint}"
    model, vocab = load_model(ckpt)
    export_model(model, vocab, work / "export", ExportSettings(int8=True, atc=None), source=str(ckpt))
    info = {"weights": weights, "params": model.get_num_params(), "config": vars(model.config), "tokens": args.tokens}
    print(json.dumps(info), flush=True)
    nanogpt_method(model, prompt_ids(vocab), 2)  # warm, as generate warms itself
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())  # fp32; a tied head counted once
    summary, rounds = {}, {}
    for name, (options, target) in VARIANTS.items():
        options = [o.format(ckpt=ckpt, onnx=work / "export") for o in options]
        arms = {"nanoGPT's method": lambda i: time_nanogpt_method(model, vocab, args.tokens),
                name: lambda i, options=options: run_generate(options, args.tokens),
                "memory limit": lambda i: memory_limit(weight_bytes)}  # fmt: skip
        results = alternate(arms, args.repeats, show=lambda arm, r: f"{r['tokens_per_s']:.1f} tokens/s")
        ratio = results.ratio(name, "nanoGPT's method", "tokens_per_s")
        fraction = results.ratio(name, "memory limit", "tokens_per_s")
        summary[name] = {
            "tokens_per_s": results.median(name, "tokens_per_s"),
            "load_s": results.median(name, "load_s"),
            "nanogpt_tokens_per_s": results.median("nanoGPT's method", "tokens_per_s"),
            "ratio": ratio,
            "ratios": [round(r, 2) for r in results.ratios(name, "nanoGPT's method", "tokens_per_s")],
            "limit_tokens_per_s": results.median("memory limit", "tokens_per_s"),
            "fraction_of_limit": fraction,
            "fractions": [round(r, 3) for r in results.ratios(name, "memory limit", "tokens_per_s")],
            "same_text_as_nanogpt_method": all(
                r[name]["text"] == r["nanoGPT's method"]["text"] for r in results.rounds
            ),
            "target": target,
            "met": None if target is None else fraction >= target,
        }
        rounds[name] = [{arm: {k: v for k, v in r[arm].items() if k != "text"} for arm in r} for r in results.rounds]
    int8_gain = summary["onnx_int8"]["tokens_per_s"] / summary["onnx_fp32"]["tokens_per_s"]
    summary["onnx_int8"].update(int8_over_fp32=int8_gain, target=1.5, met=int8_gain >= 1.5)
    print(f"\n{args.tokens} new tokens, batch 1, {weights} weights, medians of {args.repeats} rounds:")
    for name, row in summary.items():
        if row["target"] is None:
            goal, verdict = "none", "reported only"
        else:
            goal = f"{row['target']:g}x fp32" if name == "onnx_int8" else f"{row['target']:.0%} of the limit"
            verdict = "met" if row["met"] else "NOT met"
        print(f"  {name:20s} {row['tokens_per_s']:8.1f} tokens/s (loaded in {row['load_s']:.2f} s); "
              f"{row['fraction_of_limit']:.0%} of the memory limit {row['limit_tokens_per_s']:.0f} tokens/s "
              f"(per round {format_list(row['fractions'])}); target {goal}: {verdict}; "
              f"vs nanoGPT's {row['nanogpt_tokens_per_s']:6.1f}: {row['ratio']:5.2f}x "
              f"(per round {format_list(row['ratios'])}); same text: "
              f"{'yes' if row['same_text_as_nanogpt_method'] else 'no'}"
              f"{' (int8 weights: other logits, so other samples)' if 'int8' in name else ''}")  # fmt: skip
    return {"info": info, "rounds": rounds, "summary": summary}


# ---- speed ----
def with_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``n`` torch intra-op threads (PyTorch's threads spin as onnxruntime's do by default)."""

    def run() -> object:
        threads = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def bench_speed(work: Path, args: argparse.Namespace) -> dict:
    model, vocab = load_model(random_checkpoint(work, TINY if args.tiny else SHAKESPEARE_CHAR))
    model.eval()
    block = model.config.block_size
    start = time.perf_counter()
    export_model(model, vocab, work / "export_fp32", ExportSettings(int8=False, atc=None))
    export_fp32_s = time.perf_counter() - start
    start = time.perf_counter()
    manifest = export_model(model, vocab, work / "export", ExportSettings(int8=True, atc=None))
    export_s = time.perf_counter() - start
    print(f"export: {export_fp32_s:.1f} s fp32 graphs only, {export_s:.1f} s with int8", flush=True)
    idx = prompt_ids(vocab)
    fp32, _ = open_export(work / "export", backend="cpu")
    fp32_1, _ = open_export(work / "export", backend="cpu", threads=1)  # generate --threads 1: no spinning thread
    int8, _ = open_export(work / "export", int8=True, backend="cpu")
    int8_1, _ = open_export(work / "export", int8=True, backend="cpu", threads=1)
    ids = idx.tolist()
    torch_backend = TorchBackend(model)

    def run(backend: Backend, n: int, **options: Any) -> list[list[int]]:
        return generate(backend, ids, n, Sampler(TEMPERATURE, TOP_K), **options)

    run(fp32, 2), run(fp32_1, 2), run(int8, 2), run(int8_1, 2)  # open the sessions outside the timing
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    out: dict = {"params": model.get_num_params(), "export_s": export_s, "export_fp32_s": export_fp32_s,
                 "sizes": {name: (work / "export" / name).stat().st_size for name in manifest.files},
                 "max_abs_diff": manifest.max_abs_diff, "tokens_per_s": {}}  # fmt: skip
    for n in args.lengths:
        paths = {
            "eager_recompute": lambda n=n: run(torch_backend, n, use_cache=False),
            "eager_cache": lambda n=n: run(torch_backend, n),
            "onnx_fp32_cache": lambda n=n: run(fp32, n),
            "onnx_fp32_cache_1_thread": lambda n=n: run(fp32_1, n),
            "onnx_int8_cache": lambda n=n: run(int8, n),
            "onnx_int8_cache_1_thread": lambda n=n: run(int8_1, n),
            "eager_recompute_1thread": with_threads(1, lambda n=n: run(torch_backend, n, use_cache=False)),
            "eager_cache_1thread": with_threads(1, lambda n=n: run(torch_backend, n)),
        }
        if n + len(PROMPT) > block:
            paths["onnx_fp32_cache_half_window"] = lambda n=n: run(fp32, n, window="half")
            paths["onnx_int8_cache_half_window"] = lambda n=n: run(int8, n, window="half")

        def rate(fn: Callable[[], object], n: int = n) -> float:
            torch.manual_seed(SEED)
            start = time.perf_counter()
            fn()
            return n / (time.perf_counter() - start)

        arms = {name: lambda i, fn=fn: rate(fn) for name, fn in paths.items()}
        arms["memory_limit"] = lambda i: memory_limit(weight_bytes)["tokens_per_s"]  # in the same rounds
        results = alternate(arms, args.repeats, show=lambda name, r, n=n: f"{n} tokens {r:8.1f} tokens/s")
        for name in arms:
            best, median = results.best(name), results.median(name)
            out["tokens_per_s"][f"{name}@{n}"] = {"best": best, "median": median, "rounds": results.values(name)}
            fraction = results.ratio(name, "memory_limit")
            out["tokens_per_s"][f"{name}@{n}"]["fraction_of_limit"] = fraction
            print(
                f"{n:4d} tokens  {name:30s} best {best:8.1f}  median {median:8.1f} tokens/s, {fraction:4.0%} of the "
                f"memory limit (per round {format_list(results.ratios(name, 'memory_limit'))})",
                flush=True,
            )
    # Past block_size, exact semantics cost one full-window forward per token:
    ctx = np.zeros((1, block), dtype=np.int64)
    timed = {}
    for name, g in (("fp32", fp32), ("int8", int8)):
        g.full(ctx)
        timed[name] = lambda i, g=g: _seconds(lambda: g.full(ctx)) * 1e3
    results = alternate(timed, 3 * args.repeats, show=None)
    for name in timed:
        out[f"full_window_ms_{name}"] = results.best(name, higher=False)
        print(f"full-window forward ({block} positions), {name}: best {out[f'full_window_ms_{name}']:.1f} ms")
    return out


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- spin ----
def bench_spin(work: Path, args: argparse.Namespace) -> dict:
    from lit_nanogpt.export import onnxrt

    if not onnxrt.bounded_spin():
        import onnxruntime

        raise SystemExit(f"onnxruntime {onnxruntime.__version__} cannot bound the spin (1.26 and later can)")
    config = SHAKESPEARE_CHAR
    if args.tiny or args.model:
        n_layer, n_head, n_embd, block = (int(v) for v in args.model.split(",")) if args.model else (2, 2, 32, 64)
        config = replace(SHAKESPEARE_CHAR, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block)
    model, vocab = load_model(random_checkpoint(work, config))
    print(f"model: {vars(config)}; decode_weights {onnxrt.decode_weights(config):,}", flush=True)
    export_model(model, vocab, work / "export", ExportSettings(int8=True, atc=None))
    ids, weight_bytes = prompt_ids(vocab).tolist(), sum(p.numel() * 4 for p in model.parameters())
    settings: dict[str, tuple[int, int | None]] = {"1 thread": (1, 0)}  # name -> threads, spin bound (None: none)
    settings.update({f"2 threads, spin <= {us} us" if us else "2 threads, no spin": (2, us) for us in args.spins})
    settings["2 threads, unbounded spin"] = (2, None)
    arms: dict[str, ExportedGPT] = {}
    bounded, spin_us = onnxrt.bounded_spin, onnxrt.SPIN_US
    for int8 in (False, True):
        for name, (threads, us) in settings.items():
            onnxrt.SPIN_US, onnxrt.bounded_spin = us or 0, (lambda us=us: us is not None)
            try:  # the sessions are built on first use: now, with this setting, every graph the timed runs use
                arms[f"{'int8' if int8 else 'fp32'}, {name}"] = exported = ExportedGPT(work / "export", int8, threads)
                generate(exported, ids, args.tokens, Sampler(TEMPERATURE, TOP_K))
            finally:
                onnxrt.SPIN_US, onnxrt.bounded_spin = spin_us, bounded

    def rate(exported: ExportedGPT) -> float:
        start = time.perf_counter()
        generate(exported, ids, args.tokens, Sampler(TEMPERATURE, TOP_K))
        return args.tokens / (time.perf_counter() - start)

    out: dict = {"tokens": args.tokens, "rows": {}}
    for busy in args.busy:
        others = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            timed: dict[str, Callable[[int], float]] = {n: lambda i, e=e: rate(e) for n, e in arms.items()}
            timed["memory limit"] = lambda i: memory_limit(weight_bytes)["tokens_per_s"]
            results = alternate(timed, args.rounds, show=None)
        finally:
            for other in others:
                other.kill()
                other.wait()
        print(f"\n{busy} busy process(es) beside it; {args.tokens} tokens, tokens/s, medians of {args.rounds} rounds")
        rows = []
        for name in arms:
            base = f"{name.split(',')[0]}, 1 thread"
            row = {"tokens_per_s": results.median(name), "rounds": results.values(name),
                   "over_1_thread": results.ratio(name, base),
                   "of_limit": results.ratio(name, "memory limit")}  # fmt: skip
            out["rows"][f"{busy} busy: {name}"] = row
            rows.append([name, f"{row['tokens_per_s']:.1f}", format_list(row["rounds"], 1),
                         f"{row['over_1_thread']:.3f}", f"{row['of_limit']:.3f}"])  # fmt: skip
        rows.append(["memory limit", f"{results.median('memory limit'):.1f}",
                     format_list(results.values("memory limit"), 1), "", ""])  # fmt: skip
        print_table(["decode", "tokens/s", "rounds", "/ 1 thread (median of rounds)", "/ limit"], rows)
    return out


# ---- quality ----
def onnx_window_loss(graph: Path, val: np.ndarray, block: int, n: int) -> float:
    """Mean loss of the ``full`` graph (onnxruntime, logits for every position) over ``n`` windows."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    total = 0.0
    for i in range(n):
        w = val[i * block : (i + 1) * block + 1]
        (logits,) = session.run(None, {"idx": w[None, :block]})  # (1, T, V)
        z = logits[0].astype(np.float64)
        zmax = z.max(-1, keepdims=True)
        total += float(np.mean(np.log(np.exp(z - zmax).sum(-1)) + zmax[:, 0] - z[np.arange(block), w[1:]]))
    return total / n


def bench_quality(work: Path, args: argparse.Namespace) -> dict:
    model, vocab = load_model(import_nanogpt(BABY / "ckpt.pt", BABY / "meta.pkl", work / "baby.ckpt"))
    manifest = export_model(model, vocab, work / "baby", ExportSettings(int8=True, atc=None))
    block = model.config.block_size
    dm = CharDataModule(block_size=block, cache_dir=str(work / "cache"))
    val = dm.corpus.split("val").numpy().astype(np.int64)
    n = (len(val) - 1) // block  # nanoGPT's figure: every non-overlapping window of the split
    if args.windows:
        n = min(n, args.windows)
    out: dict = {"windows": n}
    with torch.no_grad():
        losses = [model(torch.from_numpy(val[i * block : (i + 1) * block])[None],
                        torch.from_numpy(val[i * block + 1 : (i + 1) * block + 1])[None])[1].item()
                  for i in range(n)]  # fmt: skip
    out["val_loss_pytorch"] = float(np.mean(losses))
    for name, int8 in (("fp32", False), ("int8", True)):
        graph = work / "baby" / manifest.graphs["full_int8" if int8 else "full"].file
        out[f"val_loss_onnx_{name}"] = onnx_window_loss(graph, val, block, n)
        g, _ = open_export(work / "baby", int8=int8, backend="cpu")
        for window in ("exact", "half"):  # generation-style scoring: past block_size the window applies
            out[f"stream_nll_{name}_{window}"] = nll(g, val[: args.val_tokens].tolist(), start=1, window=window)
    out["int8_val_loss_cost"] = out["val_loss_onnx_int8"] - out["val_loss_onnx_fp32"]
    print(json.dumps(out, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    p = modes.add_parser("cli", help="what lit-nanogpt generate prints, against nanoGPT's method")
    p.add_argument("--repeats", type=int, default=5, help="pairs per variant (the order swaps every pair)")
    p.add_argument("--tokens", type=int, default=200, help="new tokens per run")
    p.add_argument("--checkpoint", help="a trained lit-nanogpt checkpoint instead of random 10.65M weights")
    p = modes.add_parser("speed", help="tokens/s of every generation path, in this process")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each path's best and median are reported")
    p.add_argument("--lengths", type=int, nargs="+", default=[200, 500])
    p = modes.add_parser("spin", help="the ONNX decode's threads and spin-waiting, idle and beside busy processes")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tokens", type=int, default=200, help="new tokens per run")
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="busy processes beside it, per table")
    p.add_argument("--spins", type=int, nargs="+", default=[0, 10, 25, 100], help="spin bounds to try, us")
    p.add_argument("--model", help="N_LAYER,N_HEAD,N_EMBD,BLOCK_SIZE instead of the 10.65M model, e.g. 6,4,256,256")
    p = modes.add_parser("quality", help="int8 and half-window cost on nanoGPT's baby model")
    p.add_argument("--val_tokens", type=int, default=4000, help="tokens of validation text scored as a stream")
    p.add_argument("--windows", type=int, help="only the first N validation windows (a smoke test)")
    for p in modes.choices.values():
        p.add_argument("--out", type=Path, help="write the figures here as JSON")
        if p is not modes.choices["quality"]:
            p.add_argument("--tiny", action="store_true", help="a 2-layer, 32-wide model (a smoke test)")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    bench = {"cli": bench_cli, "speed": bench_speed, "spin": bench_spin, "quality": bench_quality}[args.mode]
    with tempfile.TemporaryDirectory() as tmp:
        result = {"machine": machine_info(), "torch_threads": torch.get_num_threads(), **bench(Path(tmp), args)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
