"""Tokens/s of generation: eager PyTorch (nanoGPT's recompute, and with the KV cache) vs the ONNX export.

    python benchmarks/bench_inference.py --repeats 3 --out /tmp/bench_inference.json

Speed uses nanoGPT's Shakespeare-char model shape (10.65M parameters: 6 layers, 6 heads, 384 wide,
block 256, vocab 65) with random weights: the time per token does not depend on their values.
Quality (the int8 validation-loss cost, the "half" window's cost) uses nanoGPT's baby model from
tests/fixtures (trained, block 64), the only trained model that ships with the repository.
Batch 1, prompt "ROMEO:", temperature 0.8, top_k 200; each figure is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_nanogpt.checkpoint import import_nanogpt, load_model  # noqa: E402
from lit_nanogpt.data import SHIPPED_CORPUS, CharDataModule, Vocabulary  # noqa: E402
from lit_nanogpt.export import ExportedGPT, ExportSettings, export_model  # noqa: E402
from lit_nanogpt.model import GPT, GPTConfig  # noqa: E402

BABY = ROOT / "tests" / "fixtures" / "nanogpt_baby"
PROMPT = "ROMEO:"


def best_rate(fn, tokens: int, repeats: int) -> float:
    """Best tokens/s of ``repeats`` runs of ``fn`` (the CPU is shared: the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        torch.manual_seed(1337)
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return tokens / best


def speed(repeats: int, lengths: list[int], work: Path) -> dict:
    torch.manual_seed(0)
    config = GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.0, bias=False)
    model = GPT(config).eval()
    vocab = Vocabulary.from_text(SHIPPED_CORPUS.read_text(encoding="utf-8"))  # Tiny Shakespeare's 65 characters
    idx = torch.from_numpy(vocab.encode(PROMPT))[None]
    start = time.perf_counter()
    export_model(model, vocab, work / "export_fp32", ExportSettings(int8=False, atc=None))
    export_fp32_s = time.perf_counter() - start
    start = time.perf_counter()
    manifest = export_model(model, vocab, work / "export", ExportSettings(int8=True, atc=None))
    export_s = time.perf_counter() - start
    print(f"export: {export_fp32_s:.1f} s fp32 graphs only, {export_s:.1f} s with int8", flush=True)
    sizes = {name: (work / "export" / name).stat().st_size for name in manifest.files}
    fp32, int8 = ExportedGPT(work / "export"), ExportedGPT(work / "export", int8=True)
    fp32.generate(idx, 2), int8.generate(idx, 2)  # open the sessions outside the timing
    out: dict = {"params": model.get_num_params(), "export_s": export_s, "export_fp32_s": export_fp32_s, "sizes": sizes,
                 "max_abs_diff": manifest.max_abs_diff, "tokens_per_s": {}}  # fmt: skip
    kw = {"temperature": 0.8, "top_k": 200}
    for n in lengths:
        runs = {
            "eager_recompute": lambda n=n: model.generate(idx, n, use_cache=False, **kw),
            "eager_cache": lambda n=n: model.generate(idx, n, use_cache=True, **kw),
            "onnx_fp32_cache": lambda n=n: fp32.generate(idx, n, **kw),
            "onnx_int8_cache": lambda n=n: int8.generate(idx, n, **kw),
        }
        if n + len(PROMPT) > config.block_size:
            runs["onnx_fp32_cache_half_window"] = lambda n=n: fp32.generate(idx, n, window="half", **kw)
            runs["onnx_int8_cache_half_window"] = lambda n=n: int8.generate(idx, n, window="half", **kw)
        for name, fn in runs.items():
            rate = best_rate(fn, n, repeats if name != "eager_recompute" else max(1, repeats - 1))
            out["tokens_per_s"][f"{name}@{n}"] = rate
            print(f"{n:4d} tokens  {name:30s} {rate:8.1f} tokens/s", flush=True)
        # PyTorch's intra-op threads spin as onnxruntime's do by default; one thread is its best case here.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for name, use_cache in (("eager_recompute_1thread", False), ("eager_cache_1thread", True)):
                fn = lambda n=n, use_cache=use_cache: model.generate(idx, n, use_cache=use_cache, **kw)  # noqa: E731
                rate = best_rate(fn, n, repeats if use_cache else max(1, repeats - 1))
                out["tokens_per_s"][f"{name}@{n}"] = rate
                print(f"{n:4d} tokens  {name:30s} {rate:8.1f} tokens/s", flush=True)
        finally:
            torch.set_num_threads(threads)
    # Past block_size, exact semantics cost one full-window forward per token:
    ctx = np.zeros((1, config.block_size), dtype=np.int64)
    for name, g in (("fp32", fp32), ("int8", int8)):
        g.full(ctx)
        best = min(_time(lambda g=g: g.full(ctx)) for _ in range(repeats * 3))
        out[f"full_window_ms_{name}"] = best * 1e3
        print(f"full-window forward ({config.block_size} positions), {name}: {best * 1e3:.1f} ms", flush=True)
    return out


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def quality(work: Path, val_tokens: int) -> dict:
    """On the trained baby model: validation loss of fp32 vs int8 graphs, and of the exact vs half window."""
    ckpt = import_nanogpt(BABY / "ckpt.pt", BABY / "meta.pkl", work / "baby.ckpt")
    model, vocab = load_model(ckpt)
    export_model(model, vocab, work / "baby", ExportSettings(int8=True, atc=None))
    block = model.config.block_size
    dm = CharDataModule(block_size=block, cache_dir=str(work / "cache"))
    val = dm.corpus.split("val").numpy()
    n = (len(val) - 1) // block  # nanoGPT's figure: every non-overlapping window of the split
    out: dict = {"windows": n}
    with torch.no_grad():
        losses = [model(torch.from_numpy(val[i * block : (i + 1) * block])[None],
                        torch.from_numpy(val[i * block + 1 : (i + 1) * block + 1])[None])[1].item()
                  for i in range(n)]  # fmt: skip
    out["val_loss_pytorch"] = float(np.mean(losses))
    for name, g in (("fp32", ExportedGPT(work / "baby")), ("int8", ExportedGPT(work / "baby", int8=True))):
        total = 0.0
        for i in range(n):
            w = val[i * block : (i + 1) * block + 1]
            (logits,) = g._run("full", {"idx": w[None, :block]})
            z = logits[0].astype(np.float64)
            zmax = z.max(-1, keepdims=True)
            total += float(np.mean(np.log(np.exp(z - zmax).sum(-1)) + zmax[:, 0] - z[np.arange(block), w[1:]]))
        out[f"val_loss_onnx_{name}"] = total / n
        # Generation-style scoring of a long stretch: every token after the first block_size sees the window.
        stretch = val[:val_tokens]
        for window in ("exact", "half"):
            out[f"stream_nll_{name}_{window}"] = g.nll(stretch, start=1, window=window)
    out["int8_val_loss_cost"] = out["val_loss_onnx_int8"] - out["val_loss_onnx_fp32"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--val_tokens", type=int, default=4000, help="tokens of val text scored as a stream")
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    info = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
    import onnxruntime

    info["onnxruntime"] = onnxruntime.__version__
    with tempfile.TemporaryDirectory() as tmp:
        result = {"info": info}
        if not args.skip_speed:
            result["speed"] = speed(args.repeats, args.lengths, Path(tmp))
        result["quality"] = quality(Path(tmp), args.val_tokens)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
