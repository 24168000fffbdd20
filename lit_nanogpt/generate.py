"""``lit-nanogpt generate``: sample text from a checkpoint (PyTorch) or an export folder (onnxruntime).

No Lightning here, and with ``--onnx`` no ``onnx`` package: only what sampling needs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch

from lit_nanogpt.checkpoint import load_model
from lit_nanogpt.decoding import Backend, Sampler, TorchBackend, seeded
from lit_nanogpt.decoding import generate as decode_tokens
from lit_nanogpt.sampling import SEPARATOR, SamplingSettings
from lit_nanogpt.text import TextStream, read_corpus


def torch_device(name: str) -> torch.device:
    """``name`` as a device this process can use, or a ``ValueError`` saying what is missing."""
    if name.startswith("npu"):
        from lit_nanogpt.npu.runtime import npu_module

        npu_module(f"--device {name}")  # imports torch_npu, which makes "npu" a device type
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use cpu, cuda, cuda:1, npu or npu:1") from None
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and not (module is not None and module.is_available()):
        raise ValueError(f"--device {name}: no {device.type} device is available here; use --device cpu")
    return device


def generate(
    checkpoint: str | None = None,
    onnx: str | None = None,
    prompt: str | None = None,
    seed: int = 1337,
    device: str = "cpu",
    use_cache: bool = True,
    int8: bool = False,
    window: Literal["exact", "half"] = "exact",
    backend: Literal["auto", "cpu", "cann", "om"] = "auto",
    cache: Literal["auto", "dynamic", "static"] = "auto",
    threads: int | None = None,
    **sampling: Any,
) -> None:
    """Sample from a lit-nanogpt checkpoint or export folder and print each sample as nanoGPT's sample.py does.

    Args:
        checkpoint: A checkpoint written by ``fit`` or ``import-nanogpt``; nothing else is needed.
        onnx: Instead of ``checkpoint``: an export folder (``lit-nanogpt export`` or the fit-end export),
            run with onnxruntime (or on Ascend, its .om through ais_bench or onnxruntime's CANN provider).
        prompt: Text to continue; prefix with ``FILE:`` to read it from a file. Default a newline (nanoGPT's),
            or the vocabulary's first character when it has no newline.
        seed: Seed of the sampling: the same draws as ``torch.manual_seed(seed)`` in nanoGPT's sample.py.
        device: Where to run, e.g. ``cpu`` or ``cuda``.
        use_cache: Keep keys and values while the text fits in block_size (same tokens, faster).
        int8: With ``onnx``: run the int8-weight graphs (faster on CPU; see docs/export.md for the cost).
            CPU only: refused with ``--backend cann`` or ``om``.
        window: Past block_size: ``exact`` (nanoGPT's sliding window, a full window per token) or ``half``
            (re-read the last block_size/2 tokens when the cache is full: faster, not identical).
        backend: With ``onnx``: ``auto``, ``cpu`` (onnxruntime), ``cann`` (onnxruntime's CANN provider)
            or ``om`` (the atc-compiled .om files through ais_bench).
        cache: With ``onnx``: ``dynamic`` (prefill/decode graphs, a cache that grows), ``static`` (the
            fixed-shape prefill_static/decode_static pair that atc and the CANN provider compile once)
            or ``auto`` (static on Ascend, dynamic on CPU). Same tokens either way.
        threads: With ``onnx`` on the CPU: onnxruntime's threads for every graph, spin-waiting between ops
            when more than one (at most 25 us each wait, ``lit_nanogpt.export.onnxrt.SPIN_US``). Default: each
            token on 2 such threads (one below 10M weights), whole windows on one per core, not spinning. On 2
            cores that decoded nanoGPT's 10.65M model 1.43x (fp32) and 1.31x (int8) as fast as one thread on an
            idle CPU and 0.96-0.98x as fast beside busy processes (BENCHMARKS.md). Before onnxruntime 1.26, which
            cannot bound the spin, the default decodes on one thread and ``--threads N`` spins without a bound.
        sampling: ``SamplingSettings``' fields, given flat: ``--max_new_tokens``, ``--temperature``,
            ``--top_k``, ``--num_samples``.
    """
    settings = SamplingSettings(**sampling)
    if (checkpoint is None) == (onnx is None):
        raise ValueError("pass exactly one of --checkpoint CKPT (PyTorch) and --onnx EXPORT_DIR (onnxruntime)")
    if onnx is None and (int8 or backend != "auto" or cache != "auto" or threads is not None):
        raise ValueError("--int8, --backend, --cache and --threads apply to --onnx EXPORT_DIR only")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: give at least 1, or leave it unset")
    if prompt is not None and prompt.startswith("FILE:"):
        prompt, _ = read_corpus(Path(prompt[5:]), what="prompt file")
    start = time.perf_counter()
    runner: Backend
    if onnx is not None:
        from lit_nanogpt.export.onnxrt import open_export

        runner, _ = open_export(onnx, int8=int8, backend=backend, cache=cache, threads=threads)
        vocab = runner.vocab
    else:
        assert checkpoint is not None  # exactly one of the two, checked above
        model, vocab = load_model(checkpoint)
        runner = TorchBackend(model.to(torch_device(device)))
    block_size = runner.block_size
    if prompt is None:
        prompt = vocab.default_prompt
    if missing := vocab.unknown(prompt):
        raise ValueError(f"prompt has characters not in the model's vocabulary: {''.join(missing)!r}; remove them")
    if not prompt:
        raise ValueError("the prompt is empty: give at least one character, e.g. a newline")
    ids = vocab.encode(prompt).tolist()
    if len(ids) > block_size:
        unit = "characters" if vocab.name == "char" else "tokens"
        print(f"prompt has {len(ids)} {unit}, more than block_size={block_size}: "
              f"the model sees only the last {block_size}", file=sys.stderr)  # fmt: skip
    # Warm-up, before the timer: one short run through every graph generation will use (onnxruntime
    # builds its sessions on first use; PyTorch allocates on a shape's first run), so that the tokens/s
    # line times generation alone. Greedy, so it draws nothing from the seeded generator.
    warm = Sampler(temperature=0.0)
    decode_tokens(runner, [ids], min(2, settings.max_new_tokens), warm, use_cache, window)  # prefill, one decode
    if len(ids) + settings.max_new_tokens - 1 > block_size:  # some token will see a full, sliding window
        decode_tokens(runner, [[0] * block_size], 2, warm, use_cache, window)  # at the shape the timed tokens use
    print(f"Loaded {onnx or checkpoint} in {time.perf_counter() - start:.2f} s", file=sys.stderr)

    def show(tokens: list[int]) -> None:  # each character as it is drawn (whole: never half a UTF-8 one)
        sys.stdout.write(stream.push(tokens))
        sys.stdout.flush()

    # One stream for all samples, drawn one after another, as nanoGPT's sample.py after torch.manual_seed.
    sampler = Sampler(settings.temperature, settings.top_k, generator=seeded(seed, runner.device))
    new_tokens, seconds = 0, 0.0
    for _ in range(settings.num_samples):
        sys.stdout.write(prompt)  # nanoGPT's layout: prompt and continuation, a newline, the separator line
        sys.stdout.flush()
        stream = TextStream(vocab, ids)
        start = time.perf_counter()
        decode_tokens(runner, [ids], settings.max_new_tokens, sampler, use_cache, window, on_token=show)
        seconds += time.perf_counter() - start
        sys.stdout.write(stream.flush())
        new_tokens += settings.max_new_tokens
        print()
        print(SEPARATOR, flush=True)
    print(f"{new_tokens} tokens in {seconds:.2f} s ({new_tokens / seconds:.1f} tokens/s)", file=sys.stderr)
