"""Fixtures shared by the test modules. Helpers are plain modules beside the tests, imported by name:
``_data_fixtures`` (images, DICOM, the shard CLI, a corrupt corpus), ``_train_helpers`` (the tiny run,
its logs, torchrun agents), ``_dist_helpers`` (ranks as real processes), ``_listeners`` (sockets of a
process tree), ``fake_kube`` (a local Kubernetes API server). No test module imports another."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from _data_fixtures import N_FIRST, REALDATA, add_images


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A committed shard dataset of ``N_FIRST`` gray 32-px images (4 per shard), one per test module."""
    root = tmp_path_factory.mktemp("stream")
    add_images(root / "ds", root / "src", range(N_FIRST))
    return root / "ds"


@pytest.fixture
def realdata() -> Path:
    """``../shared/realdata`` (real photographs and DICOMs). Missing: a skip, or a failure under CI (CI=true),
    where a silently skipped real-data test would hide that the data never arrived."""
    if not REALDATA.is_dir():
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI=true but the real images are missing at {REALDATA}")
        pytest.skip(f"real images not found at {REALDATA}")
    return REALDATA
