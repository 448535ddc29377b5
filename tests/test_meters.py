"""Meters and model helpers: diagnostics (recall, error), FLOP accounting, chat-template rendering."""
import pytest
import torch

from sparsebench.attention import Meter, install, method_layers
from sparsebench.flops import dense_causal_attention_flops
from sparsebench.methods.dense import Dense
from sparsebench.methods.streaming import Streaming
from sparsebench.models import TemplatedTokenizer, byte_tokenizer, load, render_prompt


def _meter_run(compose, method, T=160):
    cfg = compose(["model=tiny_llama", "model.device=cpu"])
    model, _, _ = load(cfg.model, cfg.paths.cache_dir)
    meter = Meter(diagnostics=True, diag_rows=32)
    install(model, method, method_layers(model.config, "all"), "reference", meter)
    ids = torch.randint(3, 250, (1, T), generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        model(ids)
    model.set_attn_implementation("eager")
    return model, meter


def test_dense_diagnostics_are_exact(compose):
    model, meter = _meter_run(compose, Dense(executor="reference"))
    assert len(meter.records) == model.config.num_hidden_layers
    for r in meter.records:
        assert r.density == 1.0
        assert r.attention_recall == pytest.approx(1.0, abs=1e-5)
        assert r.output_rel_error < 1e-5
        assert r.attention_flops == dense_causal_attention_flops(4, 16, 160)


def test_streaming_diagnostics_measure_the_loss(compose):
    _, meter = _meter_run(compose, Streaming(n_init=4, n_local=16, executor="reference"))
    for r in meter.records:
        assert 0.0 < r.attention_recall < 1.0
        assert r.output_rel_error > 1e-3
        assert r.density < 0.3
        assert r.attention_flops == pytest.approx(r.density * dense_causal_attention_flops(4, 16, 160))


def test_chat_template_rendering_and_counting():
    tok = byte_tokenizer()
    tok.chat_template = "<bos>[user]{{ messages[0]['content'] }}[/user]{% if add_generation_prompt %}[bot]{% endif %}"
    prompt = "Find the number. The number is"
    text = render_prompt(tok, prompt, " The number is", "auto")
    assert text == "<bos>[user]Find the number.[/user][bot] The number is"
    assert render_prompt(tok, prompt, " The number is", "none") == prompt
    view = TemplatedTokenizer(tok, "auto")
    n_view = len(view(prompt)["input_ids"])
    n_real = len(tok(text, add_special_tokens=False)["input_ids"])
    assert abs(n_view - n_real) <= 2 and view.eos_token == tok.eos_token
    with pytest.raises(ValueError, match="auto, none"):
        render_prompt(tok, prompt, "", "always")


def test_encode_sample_honours_raw_prompts():
    """`encode_sample` (the run's and the calibration scripts' encoding): the chat template unless the sample is
    marked raw, which then gets the tokenizer's BOS and no template."""
    from sparsebench.models import encode_sample
    from sparsebench.task import Sample

    tok = byte_tokenizer()
    tok.chat_template = "<bos>[user]{{ messages[0]['content'] }}[/user]{% if add_generation_prompt %}[bot]{% endif %}"
    prompt = "Find the number. The number is"

    def sample(**meta):
        return Sample(id="x", subtask="x", prompt=prompt, targets=("1",), max_new_tokens=4, input_tokens=0, meta=meta)

    templated = tok("<bos>[user]Find the number.[/user][bot] The number is", add_special_tokens=False)["input_ids"]
    assert encode_sample(tok, sample(answer_prefix=" The number is"), "auto") == templated
    assert encode_sample(tok, sample(), "none") == tok(prompt)["input_ids"]
    for raw in ({"raw_prompt": True}, {"chat_template": False}):
        assert encode_sample(tok, sample(**raw), "auto") == tok(prompt)["input_ids"]
    assert tok(prompt)["input_ids"][0] == tok.bos_token_id
    ids = encode_sample(tok, sample(), "auto", return_tensors="pt")
    assert ids.tolist() == [tok("<bos>[user]" + prompt + "[/user][bot]", add_special_tokens=False)["input_ids"]]
