"""Training-core helpers."""


def test_bf16_falls_back_to_fp32_with_one_line_where_not_native(monkeypatch):
    """loop.bf16 stays on where bf16 is native and becomes fp32, said once, where it is not."""
    from speechsum.training import common

    for native in (True, False):
        monkeypatch.setattr(common, "bf16_native", lambda native=native: native)
        loop, lines = common.LoopConfig(bf16=True), []
        assert common.resolve_bf16(loop, lines.append) is native and loop.bf16 is native
        assert len(lines) == (0 if native else 1) and (native or "no native bf16" in lines[0])
    loop = common.LoopConfig(bf16=False)
    assert common.resolve_bf16(loop) is False


def test_by_length_sorts_shortest_first_and_keeps_ties_in_order():
    from speechsum.training import common

    items = [{"id": i, "n": n} for i, n in enumerate([5, 1, 5, 3])]
    assert [r["id"] for r in common.by_length(items, lambda r: r["n"])] == [1, 3, 0, 2]
    assert common.rank_slice(common.by_length(items, lambda r: r["n"]), 1, 2, 0, 1) == [items[0], items[2]]
