import dataclasses
import importlib.util
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from ste_ray.config import Alias, ConfigError, build_parser, flags_markdown, from_dict, load_config, option
from ste_ray.engine import EngineConfig
from ste_ray.runtime import RayConfig
from ste_ray.tools.calls import ToolCallConfig, limits_for

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Inner:
    size: int = option(3, help="a size")
    ratio: float = option(0.5, help="a ratio")

    def validate(self):
        if self.size < 1:
            raise ConfigError("size: must be at least 1")


@dataclasses.dataclass
class Job:
    inner: Inner = option(default_factory=Inner, help="nested section")
    name: str = option("x", help="a name")
    flag: bool = option(False, help="a flag")
    tags: list[str] = option(default_factory=list, help="tags")
    extra: dict = option(default_factory=dict, help="extra")
    limit: int | None = option(None, help="optional limit")


def test_defaults_yaml_then_cli_precedence(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: from-yaml\ninner:\n  size: 7\n  ratio: 0.25\ntags: [a, b]\n")
    cfg = load_config(Job, ["--config", str(path), "--inner.size", "9", "--flag", "--extra", "{k: 1}"])
    assert cfg.name == "from-yaml"          # YAML over default
    assert cfg.inner.size == 9              # CLI over YAML
    assert cfg.inner.ratio == 0.25
    assert cfg.flag is True
    assert cfg.tags == ["a", "b"]
    assert cfg.extra == {"k": 1}
    assert cfg.limit is None


def test_cli_forms(tmp_path):
    cfg = load_config(Job, ["--flag", "false", "--tags", "x,y", "--limit", "5", "--inner.ratio=2"])
    assert (cfg.flag, cfg.tags, cfg.limit, cfg.inner.ratio) == (False, ["x", "y"], 5, 2.0)
    assert load_config(Job, ["--limit", "none"]).limit is None
    assert load_config(Job, ["--tags", "solo"]).tags == ["solo"]  # one element, no comma
    assert load_config(Job, ["--tags", "[a, b]"]).tags == ["a", "b"]


@pytest.mark.parametrize(
    "values, names",
    [
        ({"nmae": "typo"}, "nmae"),
        ({"inner": {"sise": 1}}, "inner.sise"),
        ({"inner": {"size": "many"}}, "inner.size"),
        ({"inner": {"size": 2.5}}, "inner.size"),
        ({"flag": "perhaps"}, "flag"),
        ({"tags": {"a": 1}}, "tags"),
        ({"inner": 3}, "inner"),
        ({"inner": {"size": 0}}, "inner.size"),  # validate() of a nested section
    ],
)
def test_errors_name_the_field(values, names):
    with pytest.raises(ConfigError, match=rf"^{names.replace('.', '[.]')}:"):
        from_dict(Job, values)


def test_bad_cli_value_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="--inner.size"):
        load_config(Job, ["--inner.size", "lots"])
    with pytest.raises(ConfigError, match="no such file"):
        load_config(Job, ["--config", str(tmp_path / "absent.yaml")])
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Job, ["--config", str(bad)])


def test_every_flag_is_documented():
    for cls in (EngineConfig, RayConfig, Job):
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"
    text = build_parser(Job).format_help()
    assert "--inner.size" in text and "a size" in text and "[default: 3]" in text


@pytest.mark.parametrize(
    "values, field",
    [
        ({"mode": "remote"}, "mode"),
        ({"mode": "external"}, "url"),
        ({"mode": "external", "url": "https://api.example/v1"}, "model"),
        ({"url": "api.example/v1", "mode": "attach"}, "url"),
        ({"num_replicas": 0}, "num_replicas"),
        ({"num_replicas": 2, "max_replicas": 1}, "max_replicas"),
        ({"port": 70000}, "port"),
        ({"cpu_kv_cache_gib": 0}, "cpu_kv_cache_gib"),
    ],
)
def test_engine_config_validation(values, field):
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        from_dict(EngineConfig, values)


def job_module(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_job", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_flag_the_mode_never_reads_is_an_error():
    """A URL with mode start would be ignored while a local engine started: refused before any work,
    naming the flag that would fix it; likewise engine flags with an endpoint used as it is."""
    ExploreConfig = job_module("explore").ExploreConfig

    with pytest.raises(ConfigError, match=r"^engine\.url: is read only with --engine\.mode external .* add --engine\.mode external"):
        load_config(ExploreConfig, ["--engine.url", "http://host:9/v1"])
    with pytest.raises(ConfigError, match=r"^engine\.num_replicas: configures the engine a job starts"):
        load_config(ExploreConfig, ["--explorer-url", "http://host:9/v1", "--model", "m", "--engine.num_replicas", "2"])
    with pytest.raises(ConfigError, match=r"^engine\.gpus_per_replica:"):
        from_dict(ExploreConfig, {"engine": {"mode": "attach", "gpus_per_replica": 1}})
    with pytest.raises(ConfigError, match=r"^tool_calls\.record_dir: is read only with record_mode"):
        load_config(ExploreConfig, ["--tool_calls.record_dir", "/tmp/calls"])
    # What each mode does read is accepted, and a default is never "given".
    cfg = load_config(ExploreConfig, ["--explorer-url", "http://host:9/v1", "--model", "m", "--engine.max_model_len",
                                      "4096", "--engine.api_key_env", "KEY"])
    assert (cfg.engine.mode, cfg.engine.url, cfg.engine.api_key_env) == ("external", "http://host:9/v1", "KEY")
    assert load_config(ExploreConfig, ["--engine.port", "8123", "--engine.num_replicas", "2"]).engine.num_replicas == 2
    assert load_config(ExploreConfig, ["--engine.mode", "attach", "--engine.port", "8123"]).engine.port == 8123


def test_nested_engine_errors_carry_the_section():
    @dataclasses.dataclass
    class WithEngine:
        engine: EngineConfig = option(default_factory=EngineConfig, help="engine")

    with pytest.raises(ConfigError, match=r"^engine\.mode:"):
        from_dict(WithEngine, {"engine": {"mode": "nope"}})


@dataclasses.dataclass
class JobWithOwnDefaults:
    inner: Inner = option(default_factory=lambda: Inner(size=7), help="a section with the job's own default")


def test_a_jobs_own_section_default_holds_for_yaml_cli_and_help(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("inner: {ratio: 0.25}\n")
    cfg = load_config(JobWithOwnDefaults, ["--config", str(path)])
    assert (cfg.inner.size, cfg.inner.ratio) == (7, 0.25)
    assert load_config(JobWithOwnDefaults, ["--inner.ratio", "0.1"]).inner.size == 7
    assert "| `--inner.size` | `7` |" in flags_markdown(JobWithOwnDefaults)


@dataclasses.dataclass
class WithAliases:
    inner: Inner = option(default_factory=Inner, help="nested section")
    mode: Literal["fast", "slow"] = option("fast", help="how")
    count: int = option(1, help="how many", ge=0, le=10)

    aliases: ClassVar = (Alias("size", "Shorthand for --inner.size", {"inner.size": "{}"}),
                         Alias("slow", "Shorthand for --mode slow", {"mode": "slow"}, boolean=True))

    def validate(self):
        if self.mode == "slow" and self.inner.size > 5:
            raise ConfigError("mode: slow needs inner.size ≤ 5")


def test_aliases_expand_at_parse_time_and_fields_win():
    cfg = load_config(WithAliases, ["--size", "4", "--slow"])
    assert (cfg.inner.size, cfg.mode) == (4, "slow")
    assert load_config(WithAliases, ["--size", "4", "--inner.size", "2"]).inner.size == 2  # the field's own flag wins
    with pytest.raises(ConfigError, match="^mode: slow needs"):  # validate sees the expanded values
        load_config(WithAliases, ["--slow", "--size", "9"])
    assert "| `--slow` | | Shorthand for --mode slow |" in flags_markdown(WithAliases)


def test_choices_and_bounds_are_declared_checked_and_shown():
    with pytest.raises(ConfigError, match=r"^--mode: must be one of fast, slow, got 'medium'"):
        load_config(WithAliases, ["--mode", "medium"])
    with pytest.raises(ConfigError, match=r"^count: must be at most 10"):
        from_dict(WithAliases, {"count": 11})
    with pytest.raises(ConfigError, match=r"^count: must be 0 or more"):
        from_dict(WithAliases, {"count": -1})
    help_text = build_parser(WithAliases).format_help()
    assert "{FAST,SLOW}" in help_text and "(one of: fast, slow)" in help_text and "(≥ 0, ≤ 10)" in help_text


def test_validate_never_rewrites_the_config():
    cfg = load_config(WithAliases, ["--size", "3"])
    before = dataclasses.asdict(cfg)
    cfg.validate()
    assert dataclasses.asdict(cfg) == before


def test_per_tool_limits_are_typed_and_merge_over_the_defaults():
    cfg = from_dict(ToolCallConfig, {"limits": {"timeout_s": 5}, "per_tool": {"add_date": {"rate_per_s": 2}}})
    merged = limits_for(cfg, "add_date")
    assert (merged.rate_per_s, merged.timeout_s, merged.burst) == (2, 5, 20)
    assert limits_for(cfg, "other").rate_per_s == 20
    with pytest.raises(ConfigError, match=r"^per_tool\.add_date\.rate: unknown field"):
        from_dict(ToolCallConfig, {"per_tool": {"add_date": {"rate": 2}}})
    with pytest.raises(ConfigError, match=r"^per_tool\.add_date\.burst: must be at least 1"):
        from_dict(ToolCallConfig, {"per_tool": {"add_date": {"burst": 0}}})


def test_pipeline_stages_follow_the_number_of_rounds():
    from ste_ray.pipeline import PipelineSettings, stage_names

    assert stage_names(2) == ["explore", "exploit", "train", "explore_2", "exploit_2", "train_2", "evaluate"]
    PipelineSettings(rounds=2, from_stage="train_2").validate()
    with pytest.raises(ConfigError, match="'explore_2' is not a stage of 1 round"):
        PipelineSettings(from_stage="explore_2").validate()
    with pytest.raises(ConfigError, match="comes after until_stage"):
        PipelineSettings(from_stage="train", until_stage="explore").validate()
