"""target_density: the budget knob is bisected on calibration prompts, stored, reused; rows report both densities."""
import json

import pytest

from sparsebench import calibration
from sparsebench.budget import resolve
from sparsebench.methods.streaming import Streaming
from sparsebench.models import load
from sparsebench.tasks.niah import NIAH


def test_resolve_streaming_window(compose, tmp_path):
    cfg = compose(["model=tiny_llama", "model.device=cpu", "method=streaming", "method.target_density=0.25",
                   "seq_len=768", f"paths.root_dir={tmp_path}", f"paths.calib_dir={tmp_path}/calib"])
    model, tok, _ = load(cfg.model, cfg.paths.cache_dir)
    task = NIAH(haystack="noise", depths=(50,))
    knobs = {"n_init": 16, "n_local": 3968, "block_size": 64, "executor": "reference"}
    value, rec = resolve(cfg, Streaming, knobs, model, tok, task, cfg.paths.calib_dir, [0, 1])
    assert isinstance(value, int) and 1 <= value <= 768
    assert rec["density"] == pytest.approx(0.25, abs=0.01)
    assert cfg.seed not in rec["calib_seeds"]
    stored = list((tmp_path / "calib" / "tiny_llama" / "streaming").glob("target_density-*.json"))
    assert len(stored) == 1
    stamp = stored[0].stat().st_mtime_ns
    again, _ = resolve(cfg, Streaming, knobs, model, tok, task, cfg.paths.calib_dir, [0, 1])
    assert again == value and stored[0].stat().st_mtime_ns == stamp
    assert json.loads(stored[0].read_text())["payload"]["value"] == value


def test_target_density_checks(compose):
    from sparsebench.run import prepare

    with pytest.raises(ValueError, match="no budget knob|has none"):
        prepare(compose(["model=tiny_llama", "method=dense", "method.target_density=0.5"]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        prepare(compose(["model=tiny_llama", "method=streaming", "method.target_density=1.5"]))
    with pytest.raises(ValueError, match="calibrate"):
        calibration.check_disjoint([0, 1], 1)


def test_calibration_prefills_what_the_run_feeds(compose, tmp_path, monkeypatch):
    """With a chat template active, the calibration prompts are fitted and encoded as the run does (template,
    assistant-turn answer prefix), and the stored artifact is keyed apart from the untemplated one."""
    from sparsebench import budget
    from sparsebench.models import TemplatedTokenizer, encode_sample

    cfg = compose(["model=tiny_llama", "model.device=cpu", "model.chat_template=auto", "method=streaming",
                   "method.target_density=0.3", "seq_len=768", f"paths.root_dir={tmp_path}",
                   f"paths.calib_dir={tmp_path}/calib"])
    model, tok, _ = load(cfg.model, cfg.paths.cache_dir)
    tok.chat_template = ("{{ bos_token }}<|user|>{{ messages[0]['content'] }}<|end|>"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    task = NIAH(haystack="noise", depths=(50,))
    fed = []
    real_forward = model.forward

    def spy(*a, **kw):
        fed.append(kw["input_ids"][0].tolist())
        return real_forward(*a, **kw)

    monkeypatch.setattr(model, "forward", spy)
    knobs = {"n_init": 16, "n_local": 3968, "block_size": 64, "executor": "reference"}
    _, rec = budget.resolve(cfg, Streaming, knobs, model, tok, task, cfg.paths.calib_dir, [0, 1])
    want = [encode_sample(tok, s, "auto")
            for seed in rec["calib_seeds"] for s in list(task.samples(TemplatedTokenizer(tok, "auto"), 768, 1, seed))[:1]]
    assert fed == want and all(len(ids) <= 768 for ids in fed)
    cfg_plain = compose(["model=tiny_llama", "model.device=cpu", "method=streaming", "method.target_density=0.3",
                         "seq_len=768", f"paths.root_dir={tmp_path}", f"paths.calib_dir={tmp_path}/calib"])
    _, rec_plain = budget.resolve(cfg_plain, Streaming, knobs, model, tok, task, cfg.paths.calib_dir, [0, 1])
    assert rec_plain["calib_data"] != rec["calib_data"]
