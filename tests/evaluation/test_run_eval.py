"""`eval` on a tiny in-code model and a 3-item dataset."""

import json

from tiny import make_dataset, tiny_speechlm

from speechsum.evaluation.run_eval import evaluate, markdown_table


def test_eval_tiny_model_three_items(tmp_path, tiny_dir):
    data = make_dataset(tmp_path / "data", n_train=1, n_dev=3)
    model = tiny_speechlm(tiny_dir)
    model.save_pretrained(tmp_path / "ckpt")
    m = evaluate([str(tmp_path / "ckpt")], str(data / "dev"), str(tmp_path / "out"), max_new_tokens=4,
                 embeddings=False, log=lambda *a: None)
    assert m["n_items"] == 3 and list(m["systems"]) == ["ckpt"]
    overall = m["systems"]["ckpt"]["overall"]
    assert 0 <= overall["rouge_l"] <= 1 and overall["fact_recall"] is None  # these items have no facts
    assert set(m["systems"]["ckpt"]["by"]) == {"style", "genre", "language", "voice", "held_out", "length"}
    assert (tmp_path / "out" / "predictions.parquet").is_file()
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "| ckpt |" in saved["table"] and saved["table"] == markdown_table(saved)


def test_transcription_gate_adds_wer(tmp_path, tiny_dir):
    data = make_dataset(tmp_path / "data", n_train=1, n_dev=2)
    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "ckpt")
    m = evaluate([str(tmp_path / "ckpt")], str(data / "dev"), None, max_new_tokens=3, embeddings=False,
                 task="transcribe", log=lambda *a: None)
    assert m["systems"]["ckpt"]["overall"]["wer"] >= 0.5  # a random model cannot transcribe
    assert m["table"].splitlines()[0].startswith("| system | WER |")
