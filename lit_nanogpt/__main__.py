"""The ``lit-nanogpt`` command (and ``python -m lit_nanogpt``): torch without auto-loaded backends, and a
garbage collector that does not rescan the imported libraries.

torch >= 2.5 imports every installed ``torch.backends`` entry point during ``import torch``, and
torch_npu declares one. On a host where torch_npu is installed but CANN's ``set_env.sh`` was not
sourced, that import fails, and ``import torch`` with it: every command, CPU runs included, would
die with a traceback. ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` (anything but ``"1"``, torch/__init__.py
``_is_device_backend_autoload_enabled``) turns auto-loading off; ``lit_nanogpt.npu`` imports
torch_npu itself when an NPU is asked for, and names what is missing in one line when it cannot.
A value the user set is kept, so ``TORCH_DEVICE_BACKEND_AUTOLOAD=1`` restores torch's default.
Nothing torch-related may be imported above ``main``'s first line.

Importing torch and Lightning makes about 430,000 objects that live as long as the process, and CPython's
full collections rescan every one of them: 6 during ``import lit_nanogpt.cli`` (0.54 s) and again in
interpreter shutdown (1.13 s after the last line is printed), on 2 CPU cores (``benchmarks/bench_parts.py gc``;
BENCHMARKS.md). So the command's module is imported with the collector paused, and what the import made is then
frozen (``gc.freeze``: moved where no collection looks); the collector runs as usual for everything made
afterwards, and everything is frozen again before the process exits, which then frees by reference counts
alone (0.19 s; the whole process 0.64x). Python never promised finalizers for objects alive at exit; the
cycles the import leaves behind (a few hundred objects) stay allocated until then.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys


def main() -> int:
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    from lit_nanogpt.commands import command_module
    from lit_nanogpt.commands import main as cli_main  # Lightning only for its own commands

    if (module := command_module(sys.argv[1:])) is not None:
        gc.disable()
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # a missing extra: the command's own import says so, as without this
        finally:
            gc.freeze()
            gc.enable()
    try:
        return cli_main()
    finally:
        gc.freeze()  # interpreter shutdown then frees by reference counts, without rescanning every object


if __name__ == "__main__":
    sys.exit(main())
