"""Run `python -m zaya_vl.training CONFIG` and SIGKILL the process at a chosen point (for the resume tests).

    python crash_driver.py CONFIG MODE STEP

MODE:
  after_save     right after the checkpoint of STEP is complete (a kill between checkpoints)
  in_save_state  while accelerate writes the optimizer file of STEP's checkpoint: half the bytes, then kill
  before_rename  after COMPLETE is written into STEP's temporary folder, before it is renamed
"""

import os
import signal
import sys


def kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    config, mode, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tag = f"step-{step:08d}"

    if mode == "after_save":
        from zaya_vl.training import trainer

        original = trainer.Trainer.save

        def save(self):
            path = original(self)
            if self.step == step:
                kill()
            return path

        trainer.Trainer.save = save
    elif mode == "in_save_state":
        import io

        import torch
        from accelerate import checkpointing

        original = checkpointing.save

        def save(obj, path, *args, **kwargs):
            if tag in str(path) and str(path).endswith("optimizer.bin"):
                buffer = io.BytesIO()
                torch.save(obj, buffer)
                data = buffer.getvalue()
                with open(path, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                kill()
            return original(obj, path, *args, **kwargs)

        checkpointing.save = save
    elif mode == "before_rename":
        from zaya_vl.training import checkpoint

        original = checkpoint.os.rename

        class PatchedOs:
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def rename(source, target):
                if os.path.basename(str(source)) == f".tmp-{tag}":
                    kill()
                return original(source, target)

        checkpoint.os = PatchedOs()
    else:
        raise SystemExit(f"unknown mode {mode}")

    from zaya_vl.training.cli import main as train_main

    sys.exit(train_main([config]))


if __name__ == "__main__":
    main()
