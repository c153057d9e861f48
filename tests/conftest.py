"""Suite-wide settings: one torch thread per test process. On a busy 2-core machine two threads
per process thrash (a ResNet fit went from 0.6 s to 35 s); trials under Ray set their own."""
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray for the tests of one module (2 CPUs), shut down after them."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
