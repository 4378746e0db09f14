"""Embedding similarity and BERTScore with the packaged MiniLM (integration: real weights)."""

import pytest

from conftest import real_model_dir

pytestmark = pytest.mark.integration


def test_minilm_similarity_and_bertscore():
    from speechsum.evaluation.metrics import bertscore, embedding_similarity, load_embedder

    folder = str(real_model_dir("minilm-l6"))
    ref = "The team raised the warehouse budget to 2,500 dollars."
    preds = [ref, "They increased the budget for the warehouse move to $2,500.", "The cat sat on the mat."]
    refs = [ref] * 3

    cos = embedding_similarity(preds, refs, model=folder, batch_size=2)
    assert len(cos) == 3 and cos[0] == pytest.approx(1.0, abs=1e-5)
    assert cos[0] > cos[1] > cos[2]

    scores = bertscore(preds, refs, model=folder, batch_size=2)
    assert scores[0] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0}, abs=1e-5)
    assert scores[1]["f1"] > scores[2]["f1"]
    assert all(0 < s["f1"] <= 1 + 1e-6 for s in scores)
    assert load_embedder(folder) is load_embedder(folder)  # loaded once per process
    assert embedding_similarity([], [], model=folder) == [] and bertscore([], [], model=folder) == []
