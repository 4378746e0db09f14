"""Loop stopping in the shared decoder: the pure cut rule (golden cases) and decoding with it on a
tiny model (a prefix of free decoding, cut where the rule first fires)."""

import pytest
import torch
from tiny import tiny_llm, tiny_tokenizer

from speechsum.config import ConfigError, from_dict
from speechsum.models.generation import (RepeatedUnits, check_repeat_stop, decode, left_pad, loop_cut,
                                         stop_token_ids, unit_words)
from speechsum.pipeline import PipelineConfig

BLOCK = [7, 8, 9, 10, 11, 12]  # 6 tokens: 3 copies span 18 >= 16


@pytest.mark.parametrize("ids, copies, expected", [
    ([1, 2, 3] + BLOCK * 3, 3, 3 + 6),  # keep the prefix and one copy
    ([1, 2, 3] + BLOCK * 2, 3, None),  # two copies are not a loop at copies=3
    ([1, 2, 3] + BLOCK * 2, 2, None),  # two copies of 6 span 12 < 16 tokens
    ([1] + list(range(20, 28)) * 2, 2, 1 + 8),  # 2 x 8 = 16 tokens at copies=2
    ([5] * 15, 3, None),  # one token repeated needs 16 copies ("000" in 1,000,000 never triggers)
    ([5] * 16, 3, 1),
    ([1] + [44, 0, 0, 0] * 3, 3, None),  # ",000" x 3 spans 12 < 16: a number, not a loop
    ([1] + [44, 0, 0, 0] * 4, 3, 1 + 4),
    (list(range(40)), 3, None),
    ([], 3, None),
    (BLOCK * 3 + [7, 8], 3, 6 + 2),  # a rotation of the block (8 9 10 11 12 7 ...) is caught as it completes
])
def test_loop_cut_golden(ids, copies, expected):
    assert loop_cut(ids, copies) == expected


@pytest.mark.parametrize("bad", [1, -1, "3"])
def test_repeat_stop_values_are_checked(bad):
    with pytest.raises(ValueError, match="repeat_stop"):
        check_repeat_stop(bad)
    assert check_repeat_stop(0) == 0 and check_repeat_stop(3) == 3


def test_pipeline_eval_repeat_stop_is_a_config_error():
    with pytest.raises(ConfigError, match="eval: repeat_stop=1"):
        from_dict(PipelineConfig, {"eval": {"repeat_stop": 1}})


@pytest.mark.parametrize("text, words", [
    ("- Send the plan on Friday.", ("send", "the", "plan", "on", "friday")),
    ("  2) Book the room!\n", ("book", "the", "room")),
    ("* The budget is $12,500", ("the", "budget", "is", "12", "500")),
    ("", ()),
])
def test_unit_words_golden(text, words):
    assert unit_words(text) == words


def pieces_decoder(pieces: list[str]):
    return lambda ids: "".join(pieces[i] for i in ids)


def first_unit_cut(pieces: list[str]) -> int | None:
    """Push the tokens 0..n-1 (token i's text is pieces[i]) one by one; the first cut, if any."""
    watch, ids, dec = RepeatedUnits(), [], pieces_decoder(pieces)
    for i in range(len(pieces)):
        ids.append(i)
        if (cut := watch.push(ids, dec)) is not None:
            return cut
    return None


@pytest.mark.parametrize("pieces, expected", [
    # a bullet that repeats an earlier one (not back to back): keep the lines before it
    (["- Send", " the", " plan", "\n", "- Book", " the", " room", "\n", "- Send", " the", " plan", "\n"], 8),
    # case, bullet and punctuation do not matter
    (["Send", " the", " plan", ".", " -", " send", " the", " plan", "!"], 4),
    # a sentence in a paragraph repeats two sentences later
    (["The", " budget", " is", " $12,500", ".", " The", " move", " is", " Monday", ".",
      " The", " budget", " is", " $12,500", "."], 10),
    (["Thank", " you", ".", " Thank", " you", "."], None),  # 2 words: too short to call a loop
    (["Book", " the", " room", " Friday", ".", " Book", " the", " room", " Monday", "."], None),  # another date
    (["Send", " the", " plan", ".", " Send", " the", " plan"], None),  # the repeat is not finished yet
    (["The", " total", " is", " 10", ".", "30", " dollars", ".", " The", " total", " is", " 10", "."], 8),
])
def test_repeated_units_golden(pieces, expected):
    assert first_unit_cut(pieces) == expected


def test_repeated_units_checks_the_last_line_when_the_answer_ends():
    pieces = ["- Book", " the", " room", " Friday", "\n", "- Book", " the", " room", " Friday"]
    assert first_unit_cut(pieces) is None  # no newline after the copy: not a finished line yet
    watch, dec = RepeatedUnits(), pieces_decoder(pieces)
    for n in range(1, len(pieces) + 1):
        assert watch.push(list(range(n)), dec) is None
    assert watch.push(list(range(len(pieces))), dec, last=True) == 5  # the stop token ends it
    other = RepeatedUnits()
    assert other.push([0, 1, 2, 3], dec, last=True) is None and other.push([], dec, last=True) is None


def free_then_cut(ids: list[int], copies: int, decode_ids, finished: bool = False) -> tuple[list[int], bool, bool]:
    """Reference: free decoding cut at the shortest prefix where a rule fires (the ids, whether one
    fired, whether the row ends finished):
    K back-to-back copies (`loop_cut`), else a sentence or line repeating an earlier one, else
    (an answer that ended on its stop token) a last line repeating an earlier one."""
    units = RepeatedUnits()
    for n in range(1, len(ids) + 1):
        cut = loop_cut(ids[:n], copies)
        if cut is None:
            cut = units.push(ids[:n], decode_ids)
        if cut is not None:
            return ids[:cut], True, False  # stopped mid-answer: not finished
    if finished and (cut := units.push(ids, decode_ids, last=True)) is not None:
        return ids[:cut], True, True  # the last line, at the stop token: still finished
    return ids, False, finished


class ChainLM(torch.nn.Module):
    """A scripted LM whose greedy next token is `chain[token]`: one-hot embeddings, an identity
    decoder, and a permutation-like head. It writes a prefix, then loops over a block (or stops)."""

    def __init__(self, chain: dict[int, int], vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)
        self.emb.weight.data = torch.eye(vocab)
        self.head = torch.nn.Linear(vocab, vocab, bias=False)
        self.head.weight.data = torch.zeros(vocab, vocab)
        for a, b in chain.items():
            self.head.weight.data[b, a] = 1.0

    def get_decoder(self):
        return lambda inputs_embeds, **kw: type("Out", (), {"last_hidden_state": inputs_embeds})()

    def get_output_embeddings(self):
        return self.head

    def get_input_embeddings(self):
        return self.emb


def test_decode_stops_a_multi_token_loop_after_its_prefix_and_leaves_other_rows_alone():
    stop = 99
    chain = {1: 2, 2: 3, 3: 10, **{t: t + 1 for t in range(10, 16)}, 16: 10,  # prefix 2 3, then 10..16 loops
             20: 21, 21: 22, 22: stop,  # ends on the stop token
             **{t: t + 1 for t in range(30, 90)}}  # never repeats within the budget
    tok = tiny_tokenizer()
    llm = ChainLM(chain, 100)
    ids, mask, pos = left_pad([[1], [20], [30]], 0)
    embeds = llm.get_input_embeddings()(ids)
    free = decode(llm, tok, embeds, mask, pos, [stop], max_new_tokens=40)
    cut = decode(llm, tok, embeds, mask, pos, [stop], max_new_tokens=40, repeat_stop=3)
    block = list(range(10, 17))  # 7 tokens: 3 copies span 21 >= 16
    assert free[0].ids == ([2, 3] + block * 6)[:40] and not free[0].finished
    assert cut[0].ids == [2, 3] + block and cut[0].looped and not cut[0].finished
    assert cut[0].logprobs == pytest.approx(free[0].logprobs[:9])
    assert cut[1].ids == free[1].ids == [21, 22] and cut[1].finished and not cut[1].looped
    assert cut[2].ids == free[2].ids == list(range(31, 71)) and not cut[2].looped


def test_decode_with_repeat_stop_is_free_decoding_cut_at_the_first_loop():
    """The same on a tiny random Llama (whose greedy answers collapse onto one repeated token)."""
    tok = tiny_tokenizer()
    llm = tiny_llm(len(tok), seed=5).eval()
    prompts = [tok(t)["input_ids"] for t in ["the meeting", "budget friday team report", "a", "send the plan"]]
    ids, mask, pos = left_pad(prompts, tok.pad_token_id)
    with torch.inference_mode():
        embeds = llm.get_input_embeddings()(ids)
    stops = stop_token_ids(tok, llm)
    free = decode(llm, tok, embeds, mask, pos, stops, max_new_tokens=80)
    cut = decode(llm, tok, embeds, mask, pos, stops, max_new_tokens=80, repeat_stop=3)
    assert sum(g.looped for g in cut) >= 2, [g.ids for g in free]  # the random tiny model loops
    for f, c in zip(free, cut):
        expected, fired, finished = free_then_cut(f.ids, 3, tok.decode, f.finished)
        assert c.ids == expected and c.looped == fired and c.finished == finished
        assert c.logprobs == pytest.approx(f.logprobs[: len(c.ids)])
        assert c.text == tok.decode(expected, skip_special_tokens=True).strip()


class PiecesTokenizer:
    """decode() of a scripted vocabulary: token i is the text pieces[i]."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids)


def scripted_decode(chain: dict[int, int], pieces: list[str], stop: int, max_new_tokens: int = 30):
    """Free and repeat-stopped (K=3) greedy decodes of a ChainLM from token 1; token i's text is pieces[i]."""
    llm = ChainLM(chain, len(pieces))
    ids, mask, pos = left_pad([[1]], 0)
    embeds = llm.get_input_embeddings()(ids)
    tok = PiecesTokenizer(pieces)
    return (decode(llm, tok, embeds, mask, pos, [stop], max_new_tokens=max_new_tokens)[0],
            decode(llm, tok, embeds, mask, pos, [stop], max_new_tokens=max_new_tokens, repeat_stop=3)[0])


def test_decode_stops_at_a_repeated_line_before_the_copies_rule_would():
    """Lines A B A ...: the third line repeats the first, so the row keeps A B and stops, long before
    three back-to-back copies of the 8-token block (24 tokens) would stop it."""
    stop = 20
    pieces = ["<s>", "x", "- Send", " the", " plan", "\n", "- Book", " the", " room", "\n"] + ["?"] * 11
    chain = {1: 2, **{t: t + 1 for t in range(2, 9)}, 9: 2}
    free, cut = scripted_decode(chain, pieces, stop)
    assert free.ids[:12] == list(range(2, 10)) + [2, 3, 4, 5]
    assert cut.ids == list(range(2, 10)) and cut.looped and not cut.finished
    assert cut.text == "- Send the plan\n- Book the room"


def test_decode_drops_a_last_line_that_repeats_an_earlier_one_at_the_stop_token():
    """Lines A B A, then the stop token with no newline after the copy: the copy is dropped too
    (the demo's DPO model ended the voicemail's bullets on a copy of the line before)."""
    stop = 12
    pieces = ["<s>", "x", "- Book", " the", " room", "\n", "- Send", " the", " plan", "\n", "- Book", " the", "?"]
    # 1 -> A (2 3 4) \n (5) -> B (6 7 8) \n (9) -> A again (10 11 4') ... written as 10 11 then 4 -> stop
    chain = {1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 8, 8: 9, 9: 10, 10: 11, 11: 13, 13: stop}
    pieces += [" room"]
    free, cut = scripted_decode(chain, pieces, stop)
    assert free.text == "- Book the room\n- Send the plan\n- Book the room" and free.finished
    assert cut.text == "- Book the room\n- Send the plan" and cut.looped and cut.finished
    assert cut.ids == list(range(2, 10))


def test_samples_from_a_shared_prefill_equal_samples_from_repeated_prompts():
    """DPO's N samples per prompt decode from one prefill repeated N times (`Prefill.repeat`), and
    its greedy summary from the original: the same tokens and log-probs as prefilling each copy."""
    from speechsum.models.generation import decode_from, prefill

    tok = tiny_tokenizer()
    llm = tiny_llm(len(tok), seed=5).eval()
    prompts = [tok(t)["input_ids"] for t in ["the meeting", "budget friday team report", "send the plan"]]
    stops = stop_token_ids(tok, llm)
    n = 4
    with torch.inference_mode():
        ids, mask, pos = left_pad(prompts, tok.pad_token_id)
        embeds = llm.get_input_embeddings()(ids)
        r_ids, r_mask, r_pos = left_pad([p for p in prompts for _ in range(n)], tok.pad_token_id)
        r_embeds = llm.get_input_embeddings()(r_ids)
    each = decode(llm, tok, r_embeds, r_mask, r_pos, stops, max_new_tokens=24, do_sample=True,
                  generator=torch.Generator().manual_seed(3))
    greedy = decode(llm, tok, embeds, mask, pos, stops, max_new_tokens=24)
    start = prefill(llm, embeds, mask, pos)
    shared = decode_from(llm, tok, start.repeat(n), stops, max_new_tokens=24, do_sample=True,
                         generator=torch.Generator().manual_seed(3))
    shared_greedy = decode_from(llm, tok, start, stops, max_new_tokens=24)  # the original, untouched by the copy
    assert len({tuple(g.ids) for g in each}) > len(prompts)  # the samples differ within a prompt
    assert [g.ids for g in shared] == [g.ids for g in each]
    assert [g.ids for g in shared_greedy] == [g.ids for g in greedy]
    for a, b in zip(shared + shared_greedy, each + greedy):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
