"""data.views_device=accelerator: loader workers only decode, the trainer makes the views of the whole
batch on its device — and gets exactly the loader path's batch for the same seed (run here on CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _data_fixtures import ingest_gray
from ldisc.data import StreamLoader
from ldisc.data.stream import pair_generator, pair_seed
from ldisc.views import ViewConfig, collate_views, make_views
from ldisc.views_batch import DeviceViews, check_views_device, decoded_batch, views_on_device


def _pil(seed: int, size: tuple[int, int], mode: str) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _assert_same_batch(got: dict, want: dict) -> None:
    assert set(want) <= set(got)
    for k, v in want.items():
        if torch.is_tensor(v):
            assert got[k].dtype == v.dtype, k
            assert torch.equal(got[k], v), f"{k}: max diff {(got[k].float() - v.float()).abs().max()}"
        else:
            assert got[k] == v, k


@pytest.mark.parametrize("modality,second_view", [("fundus", "rotations"), ("xray", "dihedral")])
@pytest.mark.parametrize("mixed", [False, True], ids=["same-size", "mixed-sizes-and-modes"])
def test_device_path_equals_loader_path(modality, second_view, mixed):
    cfg = ViewConfig(view_side=40, modality=modality, second_view=second_view)
    if mixed:       # gray and RGB images of three sizes in one batch: warped per size group
        images = [_pil(i, [(64, 64), (48, 56), (64, 64)][i % 3], "RGB" if i % 2 else "L") for i in range(8)]
    else:
        images = [_pil(i, (64, 64), "RGB" if modality == "fundus" else "L") for i in range(8)]
    seeds = [pair_seed(7, 1, 2 * i) for i in range(4)]
    want = collate_views([make_views(images[i], images[i + 1], cfg, pair_generator(7, 1, i))
                          for i in range(0, 8, 2)])
    for worker_cfg in (None, cfg):        # the random draws made by the trainer, or by the loader worker
        decoded = decoded_batch(images, seeds, worker_cfg)
        assert torch.is_tensor(decoded["images_u8"]) != mixed and decoded["view_seeds"].dtype == torch.int64
        assert ("view_draws" in decoded) == (worker_cfg is not None)
        got = views_on_device(decoded, cfg, "cpu")
        assert "images_u8" not in got and got["x1_1"].shape == (4, 1 if modality == "xray" else 3, 40, 40)
        _assert_same_batch(got, want)


def test_bad_views_device_and_pair_count():
    with pytest.raises(ValueError, match="views_device"):
        check_views_device("gpu")
    with pytest.raises(ValueError, match="pairs"):
        decoded_batch([_pil(0, (8, 8), "L")] * 3, [1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return ingest_gray(tmp_path_factory.mktemp("views-device"), 20, shard_samples=6)


def test_stream_decoded_batches_equal_view_batches_with_workers(dataset):
    """Two loader workers, output='decoded' + views on the trainer's device = output='views'."""
    cfg = ViewConfig(view_side=24)
    views = list(StreamLoader(dataset, batch_size=2, seed=4, world_size=1, rank=0, num_workers=2, view_config=cfg))
    decoded = list(StreamLoader(dataset, batch_size=2, seed=4, world_size=1, rank=0, num_workers=2,
                                view_config=cfg, output="decoded"))
    assert len(views) == len(decoded) == 5
    assert decoded[0]["images_u8"].dtype == torch.uint8 and decoded[0]["images_u8"].shape == (4, 32, 32, 1)
    assert decoded[0]["view_draws"]["finish"]["mix_w"].shape == (2,)     # drawn in the worker
    for got, want in zip(decoded, views):
        _assert_same_batch(views_on_device(got, cfg, "cpu"), want)


def test_config_switch_wraps_the_train_source_only(dataset):
    from ldisc.config import compose
    from ldisc.data.build import build_data_source
    from ldisc.views import view_config

    overrides = ["data=shards", f"data.dataset={dataset}", "data.view_side=16", "data.num_workers=0",
                 "data.modality=xray", "train.batch_size=2", "seed=3"]
    plain = build_data_source(compose("pretrain", overrides), 0, 1)
    on_device = build_data_source(compose("pretrain", overrides + ["data.views_device=accelerator"]), 0, 1,
                                  device=torch.device("cpu"))
    assert isinstance(on_device, DeviceViews) and on_device.output == "decoded"
    cfg = compose("pretrain", overrides + ["data.views_device=accelerator", "data.cache_dir=/tmp/c",
                                           "data.cache_limit_gb=0.5"])
    val = StreamLoader.from_config(cfg.data, batch_size=2, seed=3, view_config=view_config(cfg), rank=0,
                                   world_size=1, split="val")
    assert val.output == "views" and (val.cache_dir, val.cache_limit_gb, val.cache_prefetch) == ("/tmp/c", 0.5, 2)
    for _ in range(3):
        _assert_same_batch(on_device.next_batch(), plain.next_batch())
    assert on_device.position() == plain.position()


@pytest.mark.slow
def test_pretraining_with_views_on_the_device_trains_identically(dataset, tmp_path):
    """ldisc-pretrain end to end: views_device=accelerator gives the loader path's losses, step for step."""
    from _train_helpers import TINY, losses_without_timing

    from ldisc.train import pretrain

    def run(name, *extra):
        overrides = [*[o for o in TINY if not o.startswith("data.")], "data=shards", f"data.dataset={dataset}",
                     "data.view_side=32", "data.modality=xray", "data.num_workers=0", f"run_dir={tmp_path / name}",
                     "train.stage1_steps=2", "train.stage2_steps=2", "train.checkpoint_every=4",
                     "train.val_fraction=0", *extra]
        pretrain(overrides)
        return losses_without_timing(tmp_path / name)

    assert run("device", "data.views_device=accelerator") == run("loader")
