"""The real packaged weights: whisper-base + SmolLM2-135M load, train one step, summarize, reload."""

from pathlib import Path

import pytest
import torch
from conftest import real_model_dir

from speechsum.audio import load_audio
from speechsum.training.losses import token_cross_entropy

pytestmark = pytest.mark.integration
CLIP = Path(__file__).parents[1] / "examples" / "voicemail.flac"
TARGET = "Marcus moved the office move to Thursday the 14th; budget $12,500; Dana sends Priya the floor plan by Wednesday noon."


@pytest.fixture(scope="module")
def real_model():
    real_model_dir("whisper-base")
    real_model_dir("smollm2-135m-instruct")
    from speechsum.models.speech_lm import SpeechLM, SpeechLMConfig

    torch.manual_seed(0)
    return SpeechLM.from_config(SpeechLMConfig())


def test_one_training_step_on_a_real_clip(real_model):
    model = real_model
    samples = load_audio(CLIP)
    frames = model.encode_audio([samples])
    assert frames[0].shape == (-(-len(samples) // 320), 512)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen_name = "llm.base_model.model.model.layers.0.mlp.down_proj.base_layer.weight"
    frozen_before = dict(model.named_parameters())[frozen_name].detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = model.target_logits(model.build_batch(model.audio_items(frames, ["Summarize in one sentence."], [TARGET])))
    loss = token_cross_entropy(out.logits, out.targets)
    assert torch.isfinite(loss) and 1.0 < loss.item() < 20
    loss.backward()
    opt.step()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    assert any(n.startswith("projector.") for n in changed) and any("lora_A" in n for n in changed)
    assert torch.equal(dict(model.named_parameters())[frozen_name], frozen_before)
    assert all(p.grad is None for p in model.encoder.parameters())


def test_summarize_and_reload(real_model, tmp_path):
    model = real_model
    model.eval()
    text = model.summarize(CLIP, style="bullets", max_new_tokens=20)
    assert isinstance(text, str)  # an untrained connector may well say nothing useful (or nothing)
    samples = load_audio(CLIP)
    first = model.generate([samples], ["Summarize."], max_new_tokens=8, do_sample=True,
                           generator=torch.Generator().manual_seed(0))[0]
    assert len(first.ids) == len(first.logprobs) > 0 or first.finished
    model.save_pretrained(tmp_path / "ckpt")
    from speechsum.models.speech_lm import SpeechLM

    again = SpeechLM.from_pretrained(tmp_path / "ckpt")
    assert again.summarize(CLIP, style="bullets", max_new_tokens=20) == text
    second = again.generate([samples], ["Summarize."], max_new_tokens=8, do_sample=True,
                            generator=torch.Generator().manual_seed(0))[0]
    assert second.ids == first.ids


@pytest.mark.parametrize("fmt", ["flac", "m4a"])
def test_shipped_connector_reads_the_bundled_clip(fmt, tmp_path):
    """The committed CTC-aligned connector (checkpoints/tiny-align) turns the voicemail into
    LLM token embeddings that spell its content words: the soft readout's nearest tokens must
    recover most of the transcript's words (the random assembly recovers almost none). The same
    recording as a phone's m4a (AAC at 44.1 kHz stereo, decoded by FFmpeg) reads as well."""
    real_model_dir("whisper-base")
    real_model_dir("smollm2-135m-instruct")
    import numpy as np
    import torch.nn.functional as F
    from conftest import ffmpeg_write

    from speechsum.models.speech_lm import SpeechLM

    clip = CLIP
    if fmt == "m4a":
        import soxr

        stereo = np.repeat(soxr.resample(load_audio(CLIP), 16000, 44100)[:, None], 2, axis=1)
        clip = tmp_path / "voicemail.m4a"
        ffmpeg_write(clip, "ipod", "aac", stereo, 44100)
    model = SpeechLM.from_pretrained(Path(__file__).parents[1] / "checkpoints" / "tiny-align")
    assert model.config.readout == "vocab"
    with torch.no_grad():
        soft = model.project(model.encode_audio([load_audio(clip)]))[0]
        emb = model.base_llm.get_input_embeddings().weight
        ids = (F.normalize(soft, dim=-1) @ F.normalize(emb, dim=-1).T).argmax(-1).tolist()
    heard = set(model.tokenizer.decode(ids).lower().replace(",", " ").replace(".", " ").split())
    words = set(CLIP.with_suffix(".txt").read_text().lower().replace(",", " ").replace(".", " ").replace("?", " ").split())
    print(f"word recall {len(words & heard) / len(words):.2f}")
    assert len(words & heard) / len(words) > 0.5, sorted(words - heard)


def test_shipped_teacher_loads_as_a_text_model_and_summarizes_the_transcript():
    """checkpoints/tiny-teacher (KD's teacher in the demo) is SmolLM2 + a bf16 LoRA adapter and no
    projector: it loads as a plain causal LM with the adapter merged (its weights differ from plain
    SmolLM2's) and, reading the bundled voicemail's transcript, names the caller and the new day
    (plain SmolLM2 answers this prompt with a bare "Dana,")."""
    real_model_dir("smollm2-135m-instruct")
    from speechsum.evaluation.run_eval import transcript_conversations
    from speechsum.models.speech_lm import SpeechLMConfig
    from speechsum.models.text_lm import TextLM, load_causal_lm

    shipped = Path(__file__).parents[1] / "checkpoints" / "tiny-teacher"
    assert not (shipped / "projector.safetensors").exists()
    llm, tok = load_causal_lm(str(shipped))
    plain, _ = load_causal_lm("smollm2-135m-instruct")
    assert not any("lora" in n for n, _ in llm.named_parameters())
    w, w0 = llm.model.layers[0].self_attn.q_proj.weight, plain.model.layers[0].self_attn.q_proj.weight
    assert w.dtype == torch.float32 and not torch.allclose(w, w0)
    conv = transcript_conversations([CLIP.with_suffix(".txt").read_text()], ["Summarize this voicemail in one sentence."],
                                    SpeechLMConfig().system_prompt)
    text = TextLM(llm, tok).chat(conv, max_new_tokens=40)[0]
    print(text)
    assert "Marcus" in text and "Thursday" in text, text


def test_int8_decoding_of_the_real_teacher_keeps_the_facts_and_is_used():
    """Batch-1 decoding with int8 weights (precision.py, `summarize`'s default where bf16 is native)
    on the real bf16 weights: the shipped teacher still names the caller and the new day, and the
    int8 path really ran (every converted layer made its int8 copy on a single-row step)."""
    from speechsum.precision import Int8DecodeLinear, int8_decoding_available

    if not int8_decoding_available():
        pytest.skip("no torch._weight_int8pack_mm in this torch")
    real_model_dir("smollm2-135m-instruct")
    from speechsum.evaluation.run_eval import transcript_conversations
    from speechsum.models.speech_lm import SpeechLMConfig
    from speechsum.models.text_lm import TextLM

    lm = TextLM.from_pretrained(str(Path(__file__).parents[1] / "checkpoints" / "tiny-teacher"), dtype=torch.bfloat16)
    lm.decode_int8 = True
    conv = transcript_conversations([CLIP.with_suffix(".txt").read_text()], ["Summarize this voicemail in one sentence."],
                                    SpeechLMConfig().system_prompt)
    text = lm.chat(conv, max_new_tokens=40, batch_size=1)[0]
    print(text)
    layers = [m for m in lm.llm.modules() if isinstance(m, Int8DecodeLinear)]
    assert len(layers) == 7 * lm.llm.config.num_hidden_layers + 1  # q k v o gate up down per layer + the head
    assert all(m._int8_key is not None for m in layers)
    assert "Marcus" in text and "Thursday" in text, text


def test_cascade_asr_transcribes_the_bundled_clip_the_same_twice():
    from speechsum.evaluation.run_eval import load_asr, transcribe

    real_model_dir("whisper-base")
    asr = load_asr("whisper-base")
    first, second = transcribe(asr, str(CLIP)), transcribe(asr, str(CLIP))
    assert first == second
    assert "budget" in first.lower() and "thursday" in first.lower()
