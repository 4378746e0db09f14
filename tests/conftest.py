import os
import sys
from pathlib import Path

import pytest

# never reach for a model hub from tests; keep the cache inside the session's home unless set
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from tiny import save_tiny_models

    root = tmp_path_factory.mktemp("tiny-models")
    save_tiny_models(root)
    return root


@pytest.fixture
def tiny_model(tiny_dir):
    from tiny import tiny_speechlm

    return tiny_speechlm(tiny_dir)


def real_model_dir(name: str):
    """The ready registry model folder, or skip with the command that makes it ready."""
    from speechsum.models import registry

    if not registry.is_ready(name):
        pytest.skip(f"{name} is not ready: run `speechsum models fetch {name}` (or `make models`)")
    return registry.model_dir(name)


@pytest.fixture
def tiny_data(tmp_path):
    from tiny import make_dataset

    return make_dataset(tmp_path / "data")
