import json

import pytest
import soundfile as sf
from tiny import tone

WORDS = ["the meeting", "send report", "budget friday", "team plan", "review notes", "action items"]


def make_dataset(root, n_train=6, n_dev=2):
    """A tiny dataset in the synth format (Parquet manifest + FLAC) built in code."""
    from speechsum.data.dataset import write_manifest

    for split, n in (("train", n_train), ("dev", n_dev)):
        d = root / split
        (d / "audio").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            doc = f"{split}{i}"
            audio = tone(1.0 + 0.25 * i, 200 + 40 * i)
            sf.write(d / "audio" / f"{doc}.flac", audio, 16000)
            words = WORDS[i % len(WORDS)]
            rows.append({
                "id": f"{doc}-0", "doc_id": doc, "split": split, "audio": f"audio/{doc}.flac",
                "duration": len(audio) / 16000, "language": "en", "voice": "test", "voices": ["test"], "speed": 1.0,
                "genre": "meeting", "register": "neutral", "transcript": f"{words} on friday",
                "sentences": [{"text": f"{words} on friday", "start": 0.0, "end": len(audio) / 16000, "speaker": 0}],
                "instruction": "summarize", "style": "one-line" if i % 2 else "bullets", "paraphrase_id": 0,
                "held_out": False, "held_out_kind": "", "target": f"{words} on friday",
                "target_author": "facts-template", "target_problems": [], "facts": json.dumps([]),
                "source": "procedural",
            })
        write_manifest(d, rows)
    return root


@pytest.fixture
def tiny_data(tmp_path):
    return make_dataset(tmp_path / "data")
