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
