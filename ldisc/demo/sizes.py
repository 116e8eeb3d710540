"""How big ``make demo`` is: ``DEMO_SIZE=tiny`` (a smoke run, ≤ 5 min) or ``default`` (≤ 15 min with the install),
both on 2 idle CPU cores. Every number the demo varies with its size lives here."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoSize:
    name: str
    images: int            # synthetic images per site (hospital A, hospital B, the X-ray site)
    image_px: int          # side of the synthetic images and of the stored shards
    train_px: int          # LD view side during pretraining
    stage1: int            # LD stage-1 steps (2 ranks)
    stage2: int            # LD stage-2 steps
    checkpoint_every: int  # steps between checkpoints (each one validated: the best checkpoint)
    epoch_samples: int     # samples per epoch of the weighted mixture (an epoch boundary every few steps)
    eval_labels: int       # labelled training images of each synthetic twin (task@N)
    eval_max_test: int     # test images per task
    protocol: str          # configs/eval/protocol/<name>.yaml
    shape_steps: int       # stage-2 steps of the shape-guided run (the mask example)


SIZES = {
    "tiny": DemoSize("tiny", images=20, image_px=128, train_px=64, stage1=16, stage2=8, checkpoint_every=4,
                     epoch_samples=32, eval_labels=4, eval_max_test=4, protocol="smoke", shape_steps=4),
    "default": DemoSize("default", images=48, image_px=256, train_px=96, stage1=60, stage2=30, checkpoint_every=15,
                        epoch_samples=48, eval_labels=8, eval_max_test=8, protocol="demo", shape_steps=20),
}
