"""The ``lit-nanogpt`` command (and ``python -m lit_nanogpt``): torch without auto-loaded backends.

torch >= 2.5 imports every installed ``torch.backends`` entry point during ``import torch``, and
torch_npu declares one. On a host where torch_npu is installed but CANN's ``set_env.sh`` was not
sourced, that import fails, and ``import torch`` with it: every command, CPU runs included, would
die with a traceback. ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` (anything but ``"1"``, torch/__init__.py
``_is_device_backend_autoload_enabled``) turns auto-loading off; ``lit_nanogpt.npu`` imports
torch_npu itself when an NPU is asked for, and names what is missing in one line when it cannot.
A value the user set is kept, so ``TORCH_DEVICE_BACKEND_AUTOLOAD=1`` restores torch's default.
Nothing torch-related may be imported above ``main``'s first line.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    from lit_nanogpt.commands import main as cli_main  # Lightning only for its own commands

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
