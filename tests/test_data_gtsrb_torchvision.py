"""The GTSRB loader labels train and test images exactly as torchvision.datasets.GTSRB does.

Apart from test_data_sources.py because importing torchvision.datasets alone takes seconds.
"""
from __future__ import annotations

import pytest

from git_ray.registry import SOURCES
from test_data_sources import write_gtsrb  # tests/ is on sys.path (pytest prepend mode)


def test_gtsrb_labels_match_torchvision(tmp_path):
    tv = pytest.importorskip("torchvision.datasets")
    write_gtsrb(tmp_path)
    pools = SOURCES.build("gtsrb", root=str(tmp_path), image_size=None)
    for split, labels in (("train", pools.y_train), ("test", pools.y_test)):
        ref = tv.GTSRB(str(tmp_path), split=split)
        assert [ref[i][1] for i in range(len(ref))] == labels.tolist()
