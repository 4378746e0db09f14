"""Training stages (align, sft, kd, dpo) on one core (`common`)."""

import atexit
import sys


def close_process_group() -> None:
    """Destroy the distributed process group if a stage started one (under `accelerate launch`).
    Left to interpreter exit, gloo's worker threads can abort a rank whose work is done ("terminate
    called without an active exception", SIGABRT; it failed the 2-rank SFT test once in CI, and
    once more the 2-rank align test after this close was in place). So the ranks first meet at a
    barrier, and none tears its connections down while another still uses them; a rank that never
    comes (it failed) is waited for 60 s at most (gloo), then the group is destroyed anyway.
    Light on purpose: the CLI calls it on every exit without importing torch."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        try:
            if dist.get_world_size() > 1:
                from datetime import timedelta

                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=timedelta(seconds=60))
                else:
                    dist.barrier()
        except Exception:  # noqa: BLE001 - a missing rank: the exit goes on (its own error was reported)
            pass
        finally:
            dist.destroy_process_group()


def close_process_group_at_exit() -> None:
    """Library use (a stage called from Python, not the CLI) gets the same clean exit; registered
    once however many stages the process runs."""
    atexit.unregister(close_process_group)
    atexit.register(close_process_group)
