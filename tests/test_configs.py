"""Configs: every YAML composes and validates; typos, wrong types and unknown names fail with a clear message."""
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException

import sparsebench
from sparsebench.methods import METHODS
from sparsebench.tasks import TASKS

CONF = Path(sparsebench.__file__).resolve().parent.parent / "conf"


def _stems(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("method", _stems("method"))
@pytest.mark.parametrize("model", _stems("model"))
def test_every_method_and_model_composes(compose, method, model):
    from sparsebench.run import prepare

    cfg = compose([f"method={method}", f"model={model}", "task=niah", "paths.root_dir=/tmp/sb_cfg"])
    assert cfg.method.name in METHODS
    if cfg.model.source != "hub":  # hub presets are checked without the hub: composition only
        job = prepare(cfg)
        assert len(job.run_id) == 12


def test_registry_names_match_yaml_names():
    yaml_names = {yaml.safe_load((CONF / "method" / f"{s}.yaml").read_text()).get("name", s)
                  for s in _stems("method")}
    assert set(METHODS.names()) == {s for s in _stems("method") if s in METHODS.names()}
    assert set(METHODS.names()) <= set(_stems("method"))
    assert set(TASKS.names()) == set(_stems("task"))
    assert yaml_names  # variants (e.g. streaming_512) inherit their method's name


def test_misspelled_key_fails_naming_it(compose):
    with pytest.raises(ConfigCompositionException) as e:
        compose(["method=streaming", "method.n_lcoal=10"])
    assert "n_lcoal" in str(e.value.__cause__ or e.value)


def test_wrong_type_fails(compose):
    with pytest.raises(ConfigCompositionException) as e:
        compose(["seq_len=big"])
    assert "seq_len" in str(e.value.__cause__ or e.value)


def test_unknown_group_option_lists_choices(compose):
    with pytest.raises(ConfigCompositionException) as e:
        compose(["method=xatn"])
    assert "dense" in str(e.value) and "streaming" in str(e.value)


def test_registry_error_names_choices():
    with pytest.raises(KeyError) as e:
        METHODS.check("streamin")
    msg = str(e.value)
    assert "unknown method 'streamin'" in msg and "Did you mean 'streaming'" in msg
    assert "valid methods: " + ", ".join(METHODS.names()) in msg


def test_seq_len_beyond_context_fails_before_load(compose):
    from sparsebench.run import prepare

    with pytest.raises(ValueError, match="seq_len=65536 is beyond model 'gemma3_270m'"):
        prepare(compose(["seq_len=65536"]))


def test_bad_method_knob_and_executor_fail_before_load(compose):
    from sparsebench.run import prepare

    with pytest.raises(ValueError, match="n_local"):
        prepare(compose(["method=streaming", "method.n_local=0"]))
    with pytest.raises(ValueError, match="executor='cudnn'"):
        prepare(compose(["method.executor=cudnn"]))


def test_missing_data_path_fails_before_load(compose):
    from sparsebench.run import prepare

    with pytest.raises(FileNotFoundError, match="/nonexistent/essays.txt"):
        prepare(compose(["task.essay_path=/nonexistent/essays.txt"]))


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, sparsebench, sparsebench.cli, sparsebench.methods, sparsebench.tasks; "
            "print(sorted(m for m in ('torch', 'transformers', 'triton', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("launcher,plugin", [("joblib_cpu", "hydra_plugins.hydra_joblib_launcher"),
                                             ("slurm_h200", "hydra_plugins.hydra_submitit_launcher")])
def test_launcher_configs_compose(compose, launcher, plugin):
    pytest.importorskip(plugin)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="sparsebench.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert "_target_" in cfg.hydra.launcher


def test_hub_model_by_id_checks(compose):
    from omegaconf.errors import MissingMandatoryValue

    from sparsebench.models import model_label
    from sparsebench.run import prepare

    with pytest.raises(ValueError, match="model.hf_id is not set"):
        prepare(compose(["model=hf"]))
    with pytest.raises(MissingMandatoryValue, match="max_context"):
        prepare(compose(["model=hf", "model.hf_id=Qwen/Qwen2.5-0.5B"]))
    with pytest.raises(ValueError, match="model=hf model.hf_id"):
        prepare(compose(["model.hf_id=Qwen/Qwen2.5-0.5B"]))
    cfg = compose(["model=hf", "model.hf_id=Qwen/Qwen2.5-0.5B", "model.max_context=32768"])
    assert model_label(cfg.model) == "Qwen/Qwen2.5-0.5B"
    assert len(prepare(cfg).run_id) == 12


def test_chat_template_runs_carry_the_rendering_version(compose):
    """A templated run's identity includes the chat-template rendering version (so a rendering change is not
    served from cache); an untemplated run's identity does not, and so is unchanged by it."""
    from sparsebench.models import CHAT_FORMAT_VERSION
    from sparsebench.run import prepare

    plain = prepare(compose(["model=tiny_llama", "model.device=cpu"]))
    templated = prepare(compose(["model=tiny_llama", "model.device=cpu", "model.chat_template=auto"]))
    assert "chat_format_version" not in plain.semantic
    assert templated.semantic["chat_format_version"] == CHAT_FORMAT_VERSION
    assert plain.run_id != templated.run_id
