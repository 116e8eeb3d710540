"""Decode memory stays bounded: a tiny PNG of 9999×9999 pixels (a decompression-bomb-sized image under
the default ``--max-pixels``) once took 2.8 GB in one ingest worker, mostly float copies made by
windowing and cropping at full size. Decoding now reduces images far larger than the shards need
(``sharding.decode.reduction_factor``), so the worker's peak stays near one uint8 copy of the image."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw

from sharding.decode import decode_file, reduction_factor

REPO_CODE = r"""
import json, resource, sys
from pathlib import Path
from sharding.decode import decode_file
from sharding.preprocess import preprocess
from sharding.worker import work_side
path, modality, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
dec = decode_file(path, 10**8, work_side=work_side(size))
image, params = preprocess(dec, modality, size)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mb": peak / 1024, "import_mb": before / 1024, "size": image.size,
                  "original": dec.original_size, "decoded": list(dec.pixels.shape)}))
"""


def test_reduction_factor_leaves_ordinary_images_alone():
    assert reduction_factor(4288, 2848, 2048) == 1          # a large fundus photograph at 512 px shards
    assert reduction_factor(9999, 9999, 2048) == 4
    assert reduction_factor(9999, 9999, None) == 1


def test_a_9999_square_png_decodes_in_bounded_memory(tmp_path):
    im = Image.new("L", (9999, 9999), 0)
    ImageDraw.Draw(im).ellipse((1000, 1000, 9000, 9000), fill=180)
    path = tmp_path / "bomb.png"
    im.save(path, optimize=False)
    del im
    assert path.stat().st_size < 2_000_000
    out = subprocess.run([sys.executable, "-c", REPO_CODE, str(path), "xray", "512"], capture_output=True,
                         text=True, timeout=300, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["original"] == [9999, 9999] and res["decoded"] == [2500, 2500] and res["size"] == [512, 512]
    # one uint8 copy of the file's pixels is 95 MiB; the full-size float path needed ~2.8 GB
    assert res["peak_mb"] - res["import_mb"] < 400, res


def test_reduced_decode_keeps_the_mean_and_the_original_size(tmp_path):
    arr = np.random.default_rng(0).integers(0, 60000, size=(4200, 5000)).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "a16.png")
    dec = decode_file(tmp_path / "a16.png", 10**8, work_side=2048)
    assert dec.pixels.shape == (2100, 2500) and dec.pixels.dtype == np.uint16 and dec.bits_stored == 16
    assert dec.original_size == (5000, 4200)
    assert abs(float(dec.pixels.mean()) - float(arr.mean())) < 1.0
