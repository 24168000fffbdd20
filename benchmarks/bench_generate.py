#!/usr/bin/env python
"""What ``lit-nanogpt generate`` prints, against nanoGPT's sampling method, alternating in one run.

    python benchmarks/bench_generate.py --repeats 5 --out /tmp/bench_generate.json

Model: nanoGPT's Shakespeare-char config, 10.65M parameters (6 layers, 6 heads, 384 wide, block 256,
vocab 65), with random weights (``torch.manual_seed(0)``; the time per token does not depend on their
values), or a trained lit-nanogpt checkpoint with ``--checkpoint``. Batch 1, prompt "ROMEO:", 200 new
tokens (206 positions: within block_size, as in sample.py's use), temperature 0.8 and top_k 200
(sample.py's defaults), seed 1337.

- nanoGPT's method: sample.py's loop (``GPT.generate`` in nanoGPT's model.py), written here against our
  ``GPT``: no cache, the whole context (cropped to block_size) forwarded again for every new token,
  fp32 eager PyTorch under ``torch.no_grad``, in this process; timed around the loop alone, the model
  loaded and warmed beforehand, as ``generate`` times itself.
- lit-nanogpt: the real ``lit-nanogpt generate`` command in a process of its own, the tokens/s it prints
  (which times generation alone): ``--checkpoint`` (PyTorch, KV cache, fp32), ``--onnx DIR``
  (onnxruntime fp32) and ``--onnx DIR --int8 true``.

Each repeat runs every variant next to a nanoGPT-method run, the order swapped every repeat so that a
change in the machine's load falls on both sides; reported: each side's median tokens/s, every
per-pair ratio and their median, and issue 11's targets (ONNX fp32 >= 10x, int8 >= 20x).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_nanogpt.checkpoint import import_nanogpt, load_model  # noqa: E402
from lit_nanogpt.export import ExportSettings, export_model  # noqa: E402
from lit_nanogpt.model import GPT, GPTConfig, sample_next  # noqa: E402
from lit_nanogpt.sampling import SEPARATOR  # noqa: E402
from lit_nanogpt.text import SHIPPED_CORPUS, Vocabulary  # noqa: E402

SHAKESPEARE_CHAR = GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.0, bias=False)
PROMPT, SEED, TEMPERATURE, TOP_K = "ROMEO:", 1337, 0.8, 200
# Variant -> the options after ``lit-nanogpt generate``; {ckpt} and {onnx} are filled in. Target: issue 11's.
VARIANTS = {
    "pytorch_cache_fp32": (["--checkpoint", "{ckpt}"], None),
    "onnx_fp32": (["--onnx", "{onnx}", "--backend", "cpu"], 10.0),
    "onnx_int8": (["--onnx", "{onnx}", "--int8", "true"], 20.0),
}
TOKENS_LINE = re.compile(r"^(\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\)$", re.M)
LOADED_LINE = re.compile(r"^Loaded .* in ([\d.]+) s$", re.M)


@torch.no_grad()
def nanogpt_method(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """nanoGPT's sampling: every token forwards the whole context again (cropped to block_size); no cache."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size :])  # (B, 1, V): the last position, as nanoGPT's
        idx = torch.cat((idx, sample_next(logits[:, -1, :], TEMPERATURE, TOP_K)), dim=1)  # (B, T + 1)
    return idx


def time_nanogpt_method(model: GPT, vocab: Vocabulary, tokens: int) -> tuple[float, str]:
    """tokens/s of nanoGPT's method, and its text (prompt and continuation), from sample.py's seed."""
    idx = torch.from_numpy(vocab.encode(PROMPT))[None]  # (1, T)
    torch.manual_seed(SEED)
    start = time.perf_counter()
    out = nanogpt_method(model, idx, tokens)
    return tokens / (time.perf_counter() - start), vocab.decode(out[0])


def lit_nanogpt_command() -> list[str]:
    """The installed ``lit-nanogpt`` script beside this Python, else ``python -m lit_nanogpt`` (the same main)."""
    script = Path(sys.executable).with_name("lit-nanogpt")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lit_nanogpt"]


def run_generate(options: list[str], tokens: int) -> tuple[float, float, str]:
    """``lit-nanogpt generate OPTIONS``: the tokens/s it prints, its load time, and the text it printed."""
    cmd = [*lit_nanogpt_command(), "generate", *options, f"--prompt={PROMPT}", f"--max_new_tokens={tokens}",
           f"--temperature={TEMPERATURE}", f"--top_k={TOP_K}", f"--seed={SEED}", "--num_samples=1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    rate, loaded = TOKENS_LINE.search(done.stderr), LOADED_LINE.search(done.stderr)
    if done.returncode != 0 or rate is None or loaded is None or int(rate.group(1)) != tokens:
        raise SystemExit(f"{' '.join(cmd)} failed (exit code {done.returncode}):\n{done.stderr[-2000:]}")
    return float(rate.group(2)), float(loaded.group(1)), done.stdout.split("\n" + SEPARATOR)[0]


def prepare(work: Path, checkpoint: str | None) -> tuple[Path, Path, str]:
    """A lit-nanogpt checkpoint (random 10.65M weights unless ``checkpoint``), its ONNX export with the
    int8 graphs, and a description of the weights."""
    if checkpoint is None:
        torch.manual_seed(0)
        model = GPT(SHAKESPEARE_CHAR)
        chars = Vocabulary.from_text(SHIPPED_CORPUS.read_text(encoding="utf-8")).chars  # Tiny Shakespeare's 65
        # Through nanoGPT's own files and import-nanogpt: the checkpoint any user's nanoGPT run would give.
        torch.save({"model": model.state_dict(), "model_args": vars(SHAKESPEARE_CHAR)}, work / "ckpt.pt")
        with (work / "meta.pkl").open("wb") as f:
            pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                         "stoi": {c: i for i, c in enumerate(chars)}}, f)  # fmt: skip
        ckpt, weights = import_nanogpt(work / "ckpt.pt", work / "meta.pkl", work / "model.ckpt"), "random (seed 0)"
    else:
        ckpt, weights = Path(checkpoint), f"trained: {checkpoint}"
    model, vocab = load_model(ckpt)
    export_model(model, vocab, work / "export", ExportSettings(int8=True, atc=None), source=str(ckpt))
    return ckpt, work / "export", weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="pairs per variant (the order swaps every repeat)")
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per run")
    parser.add_argument("--checkpoint", help="a trained lit-nanogpt checkpoint instead of random 10.65M weights")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, onnx_dir, weights = prepare(work, args.checkpoint)
        model, vocab = load_model(ckpt)
        info = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "torch_threads": torch.get_num_threads(), "weights": weights, "params": model.get_num_params(),
            "config": vars(model.config), "tokens": args.tokens, "prompt": PROMPT, "temperature": TEMPERATURE,
            "top_k": TOP_K, "seed": SEED, "command": lit_nanogpt_command()[0],
        }  # fmt: skip
        print(json.dumps(info), flush=True)
        nanogpt_method(model, torch.from_numpy(vocab.encode(PROMPT))[None], 2)  # warm, as generate warms itself
        pairs: list[dict] = []
        for repeat in range(args.repeats):
            for name, (options, _) in VARIANTS.items():
                options = [o.format(ckpt=ckpt, onnx=onnx_dir) for o in options]
                if repeat % 2 == 0:
                    nano, nano_text = time_nanogpt_method(model, vocab, args.tokens)
                    rate, load_s, text = run_generate(options, args.tokens)
                else:
                    rate, load_s, text = run_generate(options, args.tokens)
                    nano, nano_text = time_nanogpt_method(model, vocab, args.tokens)
                pair = {"repeat": repeat, "variant": name, "tokens_per_s": rate, "nanogpt_tokens_per_s": nano,
                        "ratio": rate / nano, "load_s": load_s, "same_text": text == nano_text}  # fmt: skip
                pairs.append(pair)
                print(f"repeat {repeat + 1}  {name:20s} {rate:8.1f} tokens/s (loaded in {load_s:.2f} s)   "
                      f"nanoGPT's method {nano:6.1f} tokens/s   {pair['ratio']:5.1f}x", flush=True)  # fmt: skip

    summary = {}
    print(f"\n{args.tokens} new tokens, batch 1, {weights} weights, medians of {args.repeats} repeats:")
    for name, (_, target) in VARIANTS.items():
        mine = [p for p in pairs if p["variant"] == name]
        row = {
            "tokens_per_s": statistics.median(p["tokens_per_s"] for p in mine),
            "nanogpt_tokens_per_s": statistics.median(p["nanogpt_tokens_per_s"] for p in mine),
            "ratio": statistics.median(p["ratio"] for p in mine),
            "ratios": [round(p["ratio"], 2) for p in mine],
            "same_text_as_nanogpt_method": all(p["same_text"] for p in mine),
            "target": target,
        }
        row["met"] = None if target is None else row["ratio"] >= target
        summary[name] = row
        verdict = "" if target is None else f"  target >= {target:g}x: {'met' if row['met'] else 'NOT met'}"
        print(f"  {name:20s} {row['tokens_per_s']:8.1f} tokens/s  vs nanoGPT's {row['nanogpt_tokens_per_s']:6.1f}:"
              f" {row['ratio']:5.1f}x (per repeat {row['ratios']}){verdict}"
              f"  same text: {'yes' if row['same_text_as_nanogpt_method'] else 'no'}"
              f"{' (int8 weights: other logits, so other samples)' if 'int8' in name else ''}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"info": info, "pairs": pairs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
