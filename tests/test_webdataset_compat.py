"""Our shards are WebDataset shards: the ``webdataset`` package itself reads an ingested dataset's tars and
finds every sample of the manifest, with the same PNG bytes and JSON record, in the shard order."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from _data_fixtures import SECRET, gray_image, write_image
from ldisc.data import open_store, read_manifest
from ldisc.data.samples import SampleReader, SampleTable
from sharding.ingest import IngestOptions, ingest

wds = pytest.importorskip("webdataset")


def test_webdataset_reads_our_shards(tmp_path):
    src, ds = tmp_path / "src", tmp_path / "ds"
    for i in range(7):
        write_image(src / f"img{i}.png", gray_image(i))
    ingest(IngestOptions(source=str(src), dataset=str(ds), site="site-a", modality="xray", stored_side=64,
                         shard_samples=3, progress=False), SECRET.encode())
    store = open_store(ds)
    manifest = read_manifest(store)
    rows = manifest.samples.to_pylist()
    reader = SampleReader(store, SampleTable.from_manifest(manifest))
    ours = {row["sample_id"]: (reader.png_bytes(i), row) for i, row in enumerate(rows)}
    urls = [str(ds / s) for s in manifest.shards.column("shard").to_pylist()]
    assert len(rows) == 7 and len(urls) == 3

    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=True):
        key = sample["__key__"]
        png, row = ours[key]
        assert set(sample) >= {"__key__", "png", "json"}
        assert sample["png"] == png                        # the bytes our loader reads
        record = json.loads(sample["json"])
        assert record["id"] == key and record["site"] == row["site"] == "site-a"
        seen.append(key)
    assert seen == [r["sample_id"] for r in sorted(rows, key=lambda r: (urls.index(str(ds / r["shard"])), r["index"]))]

    decoded = next(iter(wds.WebDataset(urls[:1], shardshuffle=False).decode("l8").to_tuple("png", "json")))
    image, record = decoded                                 # webdataset's own decoders: 8-bit gray, dict
    assert image.shape == (64, 64) and image.dtype == np.uint8 and isinstance(record, dict)
    assert np.array_equal(image, np.asarray(Image.open(io.BytesIO(ours[record["id"]][0]))))
