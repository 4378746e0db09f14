"""Reference-based metrics and confidence intervals, as pure functions.

- ROUGE-1/2/Lsum F1 (Lin 2004), our own implementation: lowercase, tokens are runs of letters and
  digits (Unicode-aware, so es/fr/de words stay whole), no stemming. ROUGE-Lsum is the
  summary-level LCS: every reference sentence is matched against *all* candidate sentences and the
  union of its matched tokens counts. Sentences are lines, and each line is further split after
  . ! ? - what `rouge_score` computes when the caller puts one sentence per line.
- Embedding similarity with the packaged MiniLM sentence-transformer: cosine of the sentence
  embeddings, and a BERTScore-style greedy token-matching F1 (Zhang et al. 2020) over the same
  model's last-layer token embeddings (no idf weights, no baseline rescaling: numbers compare
  systems with each other, not with published BERTScores).
- Percentile bootstrap confidence intervals, and the paired version for two systems scored on the
  same items. With `groups` (eval passes each item's document), the bootstrap resamples whole
  documents: the instructions of one recording share its audio and facts, and their scores move
  together, so resampling items as if independent gives intervals that are too narrow.

Style compliance lives in `compliance.py`; it is re-exported here so the eval loop imports every
metric from one module.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from speechsum.evaluation.compliance import style_compliance  # noqa: F401  (re-export)

_TOKEN = re.compile(r"[^\W_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


# ---------------------------------------------------------------------------------------------
# ROUGE


def rouge_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _f1(hits: int, n_pred: int, n_ref: int) -> float:
    if hits == 0:
        return 0.0
    p, r = hits / n_pred, hits / n_ref
    return 2 * p * r / (p + r)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def repeated_ngrams(text: str, n: int = 4) -> float:
    """Share of the answer's word n-grams that already occurred earlier in it (0: no phrase of n
    words comes twice; an answer shorter than n words scores 0). Near-repeating answers ("Agreed to
    run X by Sunday 14 June. Agreed to run X by Sunday 6 June. ...") score high though no whole
    span repeats exactly, which is all the decoder's loop stop catches."""
    grams = _ngrams(rouge_tokens(text), n)
    total = sum(grams.values())
    return (total - len(grams)) / total if total else 0.0


def rouge_n(prediction: str, reference: str, n: int) -> float:
    """ROUGE-N F1: clipped n-gram overlap (an n-gram counts at most as often as on either side)."""
    pred, ref = _ngrams(rouge_tokens(prediction), n), _ngrams(rouge_tokens(reference), n)
    hits = sum((pred & ref).values())
    return _f1(hits, sum(pred.values()), sum(ref.values()))


def _sentences(text: str) -> list[list[str]]:
    out = []
    for line in text.splitlines():
        for sent in _SENTENCE_END.split(line):
            tokens = rouge_tokens(sent)
            if tokens:
                out.append(tokens)
    return out


def _lcs_positions(ref: list[str], cand: list[str]) -> set[int]:
    """Positions in `ref` of one longest common subsequence with `cand`."""
    m, n = len(ref), len(cand)
    table = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(m):
        row, nxt = table[i], table[i + 1]
        for j in range(n):
            nxt[j + 1] = row[j] + 1 if ref[i] == cand[j] else max(row[j + 1], nxt[j])
    hits, i, j = set(), m, n
    while i and j:
        if ref[i - 1] == cand[j - 1]:
            hits.add(i - 1)
            i, j = i - 1, j - 1
        elif table[i - 1][j] >= table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return hits


def rouge_lsum(prediction: str, reference: str) -> float:
    """Summary-level ROUGE-L F1 with union LCS (Lin 2004, section 3.2)."""
    refs, cands = _sentences(reference), _sentences(prediction)
    if not refs or not cands:
        return 0.0
    # A token is a hit at most as many times as it occurs in each summary: the union of LCSs of
    # one reference sentence with several candidate sentences could otherwise reuse a candidate
    # token that an earlier reference sentence already consumed.
    ref_left = Counter(t for s in refs for t in s)
    cand_left = Counter(t for s in cands for t in s)
    hits = 0
    for ref in refs:
        union = set().union(*(_lcs_positions(ref, c) for c in cands))
        for pos in sorted(union):
            tok = ref[pos]
            if ref_left[tok] > 0 and cand_left[tok] > 0:
                hits += 1
                ref_left[tok] -= 1
                cand_left[tok] -= 1
    return _f1(hits, sum(len(s) for s in cands), sum(len(s) for s in refs))


def rouge(prediction: str, reference: str) -> dict[str, float]:
    return {"rouge1": rouge_n(prediction, reference, 1), "rouge2": rouge_n(prediction, reference, 2),
            "rougeLsum": rouge_lsum(prediction, reference)}


# ---------------------------------------------------------------------------------------------
# embedding similarity


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def greedy_match(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """BERTScore's greedy matching: (precision, recall, F1) from token embeddings.

    pred [P, D], ref [R, D]. Each prediction token takes its most similar reference token
    (precision), each reference token its most similar prediction token (recall).
    """
    if len(pred) == 0 or len(ref) == 0:
        return 0.0, 0.0, 0.0
    p = pred / np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
    r = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    sim = p @ r.T  # P, R
    precision, recall = float(sim.max(axis=1).mean()), float(sim.max(axis=0).mean())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


@functools.lru_cache(maxsize=2)
def load_embedder(model: str = "minilm-l6"):
    """The sentence-transformer for `model` (registry name or folder), loaded once per process."""
    from sentence_transformers import SentenceTransformer

    from speechsum.models.registry import resolve_model

    return SentenceTransformer(str(resolve_model(model)), device="cpu")


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def embedding_similarity(predictions: Sequence[str], references: Sequence[str], model: str = "minilm-l6",
                         batch_size: int = 32) -> list[float]:
    """Cosine between the sentence embeddings of each prediction and its reference."""
    _check_pairs(predictions, references)
    if not predictions:
        return []
    st = load_embedder(model)
    emb = st.encode(list(predictions) + list(references), batch_size=batch_size, normalize_embeddings=True,
                    convert_to_numpy=True, show_progress_bar=False)
    k = len(predictions)
    return [float(x) for x in (emb[:k] * emb[k:]).sum(axis=1)]


def bertscore(predictions: Sequence[str], references: Sequence[str], model: str = "minilm-l6",
              batch_size: int = 32) -> list[dict[str, float]]:
    """BERTScore-style precision/recall/F1 per pair with the embedder's token embeddings."""
    _check_pairs(predictions, references)
    if not predictions:
        return []
    st = load_embedder(model)
    texts = list(predictions) + list(references)
    tokens = st.encode(texts, batch_size=batch_size, output_value="token_embeddings", show_progress_bar=False)
    # [CLS]/[SEP] carry sentence-level information and would match each other in every pair
    special = st.tokenizer(texts, truncation=True, max_length=st.max_seq_length,
                           return_special_tokens_mask=True)["special_tokens_mask"]
    kept = []
    for emb, mask in zip(tokens, special):
        if len(emb) != len(mask):
            raise RuntimeError(f"token embeddings ({len(emb)}) and tokenizer ({len(mask)}) disagree")
        emb = emb.float().cpu().numpy()
        kept.append(emb[np.asarray(mask) == 0])
    k = len(predictions)
    out = []
    for p_emb, r_emb in zip(kept[:k], kept[k:]):
        p, r, f = greedy_match(p_emb, r_emb)
        out.append({"precision": p, "recall": r, "f1": f})
    return out


# ---------------------------------------------------------------------------------------------
# bootstrap confidence intervals


def _values(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("need a non-empty 1-D sequence of values")
    if not np.isfinite(x).all():
        raise ValueError("values contain NaN or inf; drop items without a score first")
    return x


def _group_index(groups: Sequence, n: int) -> np.ndarray:
    """Each value's group as an integer 0..G-1 (the clusters a bootstrap resamples)."""
    if len(groups) != n:
        raise ValueError(f"groups: {len(groups)} labels for {n} values")
    return np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]


def bootstrap_ci(values: Sequence[float], n: int = 1000, alpha: float = 0.05,
                 seed: int = 0, groups: Sequence | None = None) -> tuple[float, float, float]:
    """(mean, lo, hi): the sample mean and a percentile-bootstrap (1 - alpha) interval.

    Resamples items with replacement `n` times; lo/hi are the alpha/2 and 1 - alpha/2 quantiles
    of the resampled means. With `groups` (one label per value, e.g. the document of each item),
    it resamples the groups instead (a cluster bootstrap) and each resample's mean is over all the
    values of the drawn groups, so groups of different sizes weigh by their size as in the mean.
    """
    x = _values(values)
    rng = np.random.default_rng(seed)
    if groups is None:
        means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1)
    else:
        idx = _group_index(groups, len(x))
        sums, counts = np.bincount(idx, weights=x), np.bincount(idx).astype(np.float64)
        draw = rng.integers(0, len(sums), size=(n, len(sums)))
        means = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], n: int = 1000, alpha: float = 0.05,
                        seed: int = 0, groups: Sequence | None = None) -> tuple[float, float, float]:
    """(mean of a - b, lo, hi) for two systems scored on the same items.

    Pairing resamples items, not scores: both systems see the same resampled items, so item
    difficulty (which moves both scores together) cancels and the interval is far narrower than
    the two separate intervals suggest. This equals the bootstrap of the per-item differences
    (of the per-group differences with `groups`, see `bootstrap_ci`).
    """
    xa, xb = _values(a), _values(b)
    if len(xa) != len(xb):
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(xa)} and {len(xb)}")
    return bootstrap_ci(xa - xb, n=n, alpha=alpha, seed=seed, groups=groups)


def paired_ratio_bootstrap_ci(num_a: Sequence[float], den_a: Sequence[float], num_b: Sequence[float],
                              den_b: Sequence[float], n: int = 1000, alpha: float = 0.05, seed: int = 0,
                              groups: Sequence | None = None) -> tuple[float, float, float]:
    """(sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b), lo, hi): the difference of two pooled
    ratios over the same items (e.g. invented claims over all claims stated), with a paired
    percentile bootstrap that resamples items, or `groups` (documents) as `bootstrap_ci` does.
    A pooled ratio weighs each item by its denominator: an item with no claims adds nothing,
    where a mean of per-item ratios would have to give it some value. Resamples whose
    denominator is 0 on either side are left out of the quantiles."""
    cols = [_values(v) for v in (num_a, den_a, num_b, den_b)]
    if len({len(c) for c in cols}) != 1:
        raise ValueError(f"paired ratio bootstrap needs equal lengths, got {[len(c) for c in cols]}")
    if cols[1].sum() <= 0 or cols[3].sum() <= 0:
        raise ValueError("a pooled ratio needs a positive denominator on both sides")
    point = cols[0].sum() / cols[1].sum() - cols[2].sum() / cols[3].sum()
    rng = np.random.default_rng(seed)
    if groups is None:
        sums = np.stack(cols)  # 4, items
    else:
        idx = _group_index(groups, len(cols[0]))
        sums = np.stack([np.bincount(idx, weights=c) for c in cols])  # 4, groups
    draw = rng.integers(0, sums.shape[1], size=(n, sums.shape[1]))
    na, da, nb, db = (sums[k][draw].sum(axis=1) for k in range(4))
    ok = (da > 0) & (db > 0)
    diffs = na[ok] / da[ok] - nb[ok] / db[ok]
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(point), float(lo), float(hi)
