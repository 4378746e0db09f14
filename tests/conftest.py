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


def ffmpeg_write(path, container: str, codec: str, samples, rate: int, video: bool = False) -> None:
    """A real file of the kind phones and meeting tools record, encoded by FFmpeg (PyAV): `samples`
    [frames] or [frames, channels]; with `video`, a small video track before the audio one (a
    meeting's mp4)."""
    import av
    import numpy as np

    x = np.asarray(samples, np.float32).reshape(len(samples), -1).T  # planar [channels, frames]
    with av.open(str(path), "w", format=container) as c:
        if video:
            v = c.add_stream("mpeg4", rate=5)
            v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        s = c.add_stream(codec, rate=rate)
        s.layout = "stereo" if len(x) == 2 else "mono"
        s.bit_rate = 96_000  # wmav2 has no default
        for i in range(0, x.shape[1], 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i : i + 1024]), format="fltp", layout=s.layout.name)
            f.sample_rate = rate
            for packet in s.encode(f):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
        if video:
            for k in range(int(x.shape[1] / rate * 5)):
                frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * k % 255, np.uint8), format="rgb24")
                for packet in v.encode(frame):
                    c.mux(packet)
            for packet in v.encode(None):
                c.mux(packet)
