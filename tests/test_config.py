from dataclasses import dataclass, field
from typing import Literal

import pytest

from diffdistill.config import ConfigError, coerce, from_dict, merge, parse_overrides, to_dict
from diffdistill.train.recipe import check_resume_compatible, resolve
from diffdistill.train.trainer import TrainerConfig

RECIPE = {
    "model": {"kind": "mlp", "hidden": 32},
    "method": {"name": "teacher"},
    "data": {"name": "toy_gmm"},
    "trainer": {"max_steps": 5, "optimizers": {"model": {"lr": 0.001}}},
}


@dataclass
class Inner:
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 3
    tags: list[str] = field(default_factory=list)
    pair: tuple[float, float] = (0.0, 1.0)
    maybe: int | None = None


def test_from_dict_builds_nested_configs_and_converts_types():
    cfg = from_dict(Outer, {"inner": {"rate": 1, "mode": "b"}, "tags": ["x"], "pair": [0.5, 2], "maybe": None})
    assert cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float) and cfg.inner.mode == "b"
    assert cfg.pair == (0.5, 2.0) and cfg.tags == ["x"] and cfg.maybe is None
    assert to_dict(cfg) == {"inner": {"rate": 1.0, "mode": "b"}, "steps": 3, "tags": ["x"], "pair": [0.5, 2.0],
                            "maybe": None}


@pytest.mark.parametrize("data,match", [
    ({"inner": {"rat": 1}}, r"unknown key 'inner.rat'. Did you mean 'rate'\? Valid keys here: mode, rate"),
    ({"stepz": 1}, r"Did you mean 'steps'"),
    ({"steps": "many"}, r"steps: expected an integer"),
    ({"steps": True}, r"steps: expected an integer"),
    ({"inner": {"mode": "c"}}, r"inner.mode: 'c' is not one of 'a', 'b'"),
    ({"pair": [1.0]}, r"pair: expected 2 values"),
    ({"inner": 3}, r"inner must be a mapping"),
])
def test_bad_values_name_the_key_and_the_fix(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Outer, data)


def test_overrides_parse_as_yaml_scalars_and_merge_deeply():
    over = parse_overrides(["trainer.max_steps=7", "trainer.optimizers.model.lr=1e-4", "model.hidden=[1, 2]",
                            "output_dir=runs/x"])
    assert over == {"trainer": {"max_steps": 7, "optimizers": {"model": {"lr": 1e-4}}}, "model": {"hidden": [1, 2]},
                    "output_dir": "runs/x"}
    merged = merge(RECIPE, over)
    assert merged["trainer"]["optimizers"]["model"]["lr"] == 1e-4 and merged["trainer"]["max_steps"] == 7
    assert merged["model"]["kind"] == "mlp"               # untouched siblings survive
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["trainer.max_steps"])


def test_yes_no_on_off_stay_strings_and_only_true_false_are_booleans():
    # YAML 1.1 reads `no` as False, which broke `trainer.mixed_precision=no`
    over = parse_overrides(["trainer.mixed_precision=no", "a=off", "b=yes", "c=true", "d=False"])
    assert over == {"trainer": {"mixed_precision": "no"}, "a": "off", "b": "yes", "c": True, "d": False}
    run, _ = resolve(RECIPE, ["trainer.mixed_precision=no"])
    assert run.trainer.mixed_precision == "no"
    import yaml

    assert yaml.safe_load("a: no") == {"a": False}        # PyYAML's own loader is left as it was


def test_overrides_are_never_evaluated_as_code():
    over = parse_overrides(["output_dir=__import__('os').getcwd()"])
    assert over["output_dir"] == "__import__('os').getcwd()"


def test_resolve_fills_every_default_and_rejects_unknown_section_keys():
    run, resolved = resolve(RECIPE)
    assert run.trainer.max_steps == 5 and resolved["model"]["layers"] == 3          # the MLP's own default
    assert resolved["method"]["cond_dropout"] == 0.1 and resolved["trainer"]["batch_size"] == 64
    with pytest.raises(ConfigError, match=r"unknown key 'model.hiden'. Did you mean 'hidden'"):
        resolve(merge(RECIPE, {"model": {"hiden": 3}}))
    with pytest.raises(ConfigError, match=r"unknown key 'method.name=dmd3'.*name=teacher"):
        resolve(merge(RECIPE, {"method": {"name": "dmd3"}}))
    with pytest.raises(ConfigError, match="model needs a `kind`"):
        resolve({**RECIPE, "model": {"hidden": 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'traner'"):
        resolve({**RECIPE, "traner": {}})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve("recipes/nope.yaml")


def test_resume_compatibility_allows_only_harmless_changes():
    _, a = resolve(RECIPE)
    _, b = resolve(RECIPE, ["trainer.max_steps=50", "trainer.log_every=2"])
    check_resume_compatible(a, b)
    _, c = resolve(RECIPE, ["trainer.optimizers.model.lr=0.5"])
    with pytest.raises(ConfigError, match="trainer.optimizers.model.lr: 0.001 -> 0.5"):
        check_resume_compatible(a, c)
    # a continued run may anneal its lr from where it resumes
    _, d = resolve(RECIPE, ["trainer.optimizers.model.decay_start=3000", "trainer.optimizers.model.decay_steps=500"])
    check_resume_compatible(a, d)
    # a run saved before a setting existed: the missing key compares at its default, a changed one does not
    older = {**a, "trainer": {**a["trainer"], "optimizers": {"model": {
        k: v for k, v in a["trainer"]["optimizers"]["model"].items() if k != "min_lr_ratio"}}}}
    check_resume_compatible(older, a)
    with pytest.raises(ConfigError, match="trainer.batch_size"):
        check_resume_compatible(older, resolve(RECIPE, ["trainer.batch_size=7"])[1])


def test_trainer_config_optimizer_groups_are_typed():
    cfg = coerce({"optimizers": {"model": {"betas": [0, 0.99]}}}, TrainerConfig, "trainer")
    assert cfg.optimizers["model"].betas == (0.0, 0.99)


def test_role_sections_name_roles_the_method_declares():
    """`roles:` gives any declared role a network of its own; an unknown or method-built role is a clear error."""
    from diffdistill.train.recipe import resolve

    mlp = {"kind": "mlp", "hidden": 16, "prediction": "x0"}
    run, _ = resolve("recipes/dmd2/toy_gmm2d.yaml", [])
    assert set(run.role_sections()) == {"student", "critic"}            # the `student:` / `critic:` shorthands
    run, resolved = resolve({**_toy_dmd2(), "roles": {"critic": mlp}}, [])
    assert run.role_sections() == {"critic": mlp} and resolved["roles"]["critic"]["hidden"] == 16
    with pytest.raises(ConfigError, match="has no role 'target'; its roles: student, critic"):
        resolve({**_toy_dmd2(), "roles": {"target": mlp}}, [])
    with pytest.raises(ConfigError, match="gives role 'critic' twice"):
        resolve({**_toy_dmd2(), "critic": mlp, "roles": {"critic": mlp}}, [])
    with pytest.raises(ConfigError, match="builds its 'model' itself"):
        resolve({**_toy_dmd2(), "method": {"name": "teacher"}, "roles": {"model": mlp}}, [])


def _toy_dmd2():
    from diffdistill.config import load_yaml

    recipe = load_yaml("recipes/dmd2/toy_gmm2d.yaml")
    return {k: v for k, v in recipe.items() if k not in ("student", "critic")}
