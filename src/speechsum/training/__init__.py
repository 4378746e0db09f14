"""Training stages (align, sft, kd, dpo) on one core (`common`)."""

import atexit
import sys


def close_process_group() -> None:
    """Destroy the distributed process group if a stage started one (under `accelerate launch`).
    Left to interpreter exit, gloo's worker threads can abort a rank whose work is done ("terminate
    called without an active exception", SIGABRT; it failed the 2-rank SFT test once in CI).
    Light on purpose: the CLI calls it on every exit without importing torch."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def close_process_group_at_exit() -> None:
    """Library use (a stage called from Python, not the CLI) gets the same clean exit; registered
    once however many stages the process runs."""
    atexit.unregister(close_process_group)
    atexit.register(close_process_group)
