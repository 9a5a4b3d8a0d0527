"""Config loading: every shipped config loads, and every mistake gets its own precise message."""
from pathlib import Path

import pytest
import yaml

from config import Config, apply_override, dump_config, from_dict, load_config
from config.sweep import load_points
from core.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("**/*.yaml"))
BASE = {"model": {"name": "simple_cnn"}, "data": {"name": "cifar10"}}


def build(**sections):
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return from_dict(raw)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "user errors are one line"
    return message


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    points = load_points([path])
    for p in points:
        assert isinstance(p.cfg, Config) and p.cfg.model.name and p.cfg.data.name
    assert len(points) > 1 if "sweep" in yaml.safe_load(path.read_text()) else len(points) == 1


def test_the_cnn_transformer_comparison_configs_exist():
    names = {p.name for p in CONFIGS}
    expected = {f"{m}.yaml" for m in ("simple_cnn", "simple_cnn_huge", "cnn_tr_small", "cnn_tr_medium",
                                      "cnn_tr_large", "cnn_tr_huge", "fashion_mnist")}
    assert expected <= names


def test_defaults_and_model_kwargs():
    cfg = build(model={"name": "cnn_transformer", "num_layers": 5})
    assert cfg.model.kwargs == {"num_layers": 5}
    assert cfg.train.device == "auto" and cfg.seed == 0 and cfg.data.limit_train is None
    assert cfg.run_name == "cnn_transformer"


def test_scientific_notation_string_becomes_float():
    # PyYAML reads 1e-3 (no dot) as the string '1e-3'.
    cfg = build(train={"lr": "1e-3", "weight_decay": 5})
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.weight_decay, float)


@pytest.mark.parametrize("sections, expected", [
    ({"train": {"lrr": 0.1}}, "train.lrr: unknown key (did you mean 'lr'?); valid keys in train: epochs,"),
    ({"bogus": 1}, "bogus: unknown key; valid keys: model, data, name, seed, train, output"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast' (str)"),
    ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer, got 2.5 (float)"),
    ({"train": {"epochs": True}}, "train.epochs: expected an integer, got True (bool)"),
    ({"data": {"download": "yes"}}, "data.download: expected true or false, got 'yes' (str)"),
    ({"data": {"limit_train": "ten"}}, "data.limit_train: expected an integer or null, got 'ten' (str)"),
    ({"train": {"optimizer": "adam"}}, "train.optimizer: got 'adam' (did you mean 'adamw'?); valid: adamw, sgd"),
    ({"train": {"device": "gpu"}}, "train.device: got 'gpu'"),
    ({"train": {"milestones": [1, "x"]}}, "train.milestones[1]: expected an integer, got 'x' (str)"),
    ({"train": {"epochs": 0}}, "train.epochs: got 0; must be in [1, 100,000]"),
    ({"train": {"lr": -1.0}}, "train.lr: got -1.0; must be in (0, 100]"),
    ({"train": {"schedule": "multistep"}}, "train.milestones: got []; must be a non-empty list"),
    ({"train": 3}, "train: expected a mapping of keys, got 3 (int)"),
    ({"seed": "zero"}, "seed: expected an integer, got 'zero' (str)"),
    ({"data": {"auto_augment": "randaug"}}, "data.auto_augment: got 'randaug'; valid: none, trivialaugment"),
    ({"data": {"random_erasing": 1.5}}, "data.random_erasing: got 1.5; must be in [0, 1]"),
    ({"train": {"mixup_alpha": -0.2}}, "train.mixup_alpha: got -0.2; must be in [0, 100]"),
    ({"train": {"top5": "yes"}}, "train.top5: expected true or false, got 'yes' (str)"),
    ({"train": {"lr": float("inf")}}, "train.lr: got inf; must be a finite number"),
    ({"train": {"lr": float("nan")}}, "train.lr: got nan; must be a finite number"),
    ({"train": {"epochs": 10 ** 12}}, "train.epochs: got 1000000000000; must be in [1, 100,000]"),
    ({"train": {"grad_clip": 0}}, "train.grad_clip: got 0.0; must be greater than 0, or null"),
    ({"train": {"warmup_epochs": 20}}, "train.warmup_epochs: got 20.0; must be in [0, train.epochs=10]"),
    ({"train": {"channels_last": None}}, "train.channels_last: expected true or false, got None"),
    ({"train": {"compile": "fast"}}, "train.compile: got 'fast'; valid: off, default, reduce-overhead"),
    ({"train": {"compile_mode": "default"}}, "train.compile_mode: unknown key (did you mean 'compile'?)"),
    ({"model": {"name": "vit_seed002"}}, "model.name: 'vit_seed002' was renamed to 'vit_mini_patch4_32'"),
])
def test_bad_values_are_named(sections, expected):
    assert expected in error_of(build, **sections)


def test_required_keys():
    assert error_of(from_dict, {"data": {"name": "cifar10"}}).startswith("model.name: required but not set")
    assert error_of(from_dict, {"model": {"name": "simple_cnn"}}) == "data.name: required but not set"


def test_overrides_get_the_same_checks():
    raw = {"model": {"name": "simple_cnn"}, "data": {"name": "cifar10"}}
    apply_override(raw, "train.lr=3e-4")
    apply_override(raw, "data.limit_train=100")
    apply_override(raw, "train.milestones=[2, 4]")
    cfg = from_dict(raw)
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.data.limit_train == 100 and cfg.train.milestones == [2, 4]
    apply_override(raw, "train.batch_sise=3")
    assert "train.batch_sise: unknown key (did you mean 'batch_size'?)" in error_of(from_dict, raw)


@pytest.mark.parametrize("assignment, expected", [
    ("train.lr", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("train..lr=3", "expected KEY=VALUE"),
    ("seed.x=1", "'seed' is 0, not a section"),
    ("train.lr=[1, ", "not valid YAML"),
])
def test_bad_overrides(assignment, expected):
    raw = {"seed": 0}
    assert expected in error_of(apply_override, raw, assignment)


def test_files(tmp_path):
    assert "no such file" in error_of(load_config, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: simple_cnn\n")
    assert "malformed YAML" in error_of(load_config, bad) and "line" in error_of(load_config, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    assert "expected a mapping" in error_of(load_config, listy)


def test_resolved_config_round_trips(tmp_path):
    cfg = build(model={"name": "cnn_transformer", "num_layers": 2}, train={"lr": "1e-3"})
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_build(path, capsys):
    from main import main

    assert main(["--cfg", str(path), "--dry-run"]) == 0  # builds the model for the dataset, torchinfo summary
    out = capsys.readouterr().out
    points = load_points([path])
    if points[0].tune is not None:  # a search: its space and experiments first, then each point built
        assert out.startswith("tune: search ") and f"\n{len(points)} runs:\n" in out
        assert out.count(" params\n") == len(points)
    elif points[0].values:  # a sweep: one line per point, each model built
        assert out.startswith(f"{len(points)} runs:") and out.count(" params\n") == len(points)
    else:
        assert "Total params" in out and f"name: {points[0].cfg.model.name}" in out


def test_every_original_write_up_has_configs():
    groups = {p.parent.name for p in CONFIGS}
    assert {"vit_from_scratch", "vit_vs_cnn", "attention_deep_dive", "convmixer_vs_vit"} <= groups
    deep_dive = {p.stem for p in CONFIGS if p.parent.name == "attention_deep_dive"}
    assert deep_dive == {f"{m}_{d}" for m in ("cnn", "vit", "deepvit", "hybrid") for d in ("mnist", "cifar10", "cifar100")}


# ----------------------------------------------------------------------------- numbers (the CLI matrix: test_bad_input.py)


@pytest.mark.parametrize("section, key, value, says", [
    ("train", "grad_clip", float("inf"), "train.grad_clip: got inf; must be a finite number"),  # Optional[float]
    ("train", "lr", "1e400", "train.lr: got '1e400', which is inf; must be a finite number"),
    ("train", "epochs", 10 ** 400, "train.epochs: got a 401-digit integer; must be an integer in [-2**63, 2**63)"),
    ("data", "limit_val", 2 ** 63, "data.limit_val: got 9223372036854775808; must be an integer in"),
    ("model", "mlp_ratio", float("nan"), "model.mlp_ratio: got nan; must be a finite number"),
    ("model", "depth", 70_000, "model.depth: got 70000; model sizes, counts and rates are at most 65,536"),
    ("model", "depth", "1e5", "model.depth: got '1e5'; model sizes"),
    ("model", "dropout", [0.1, [float("-inf")]], "model.dropout[1][0]: got -inf; must be a finite number"),
])
def test_numbers_must_be_finite_and_sane(section, key, value, says):
    sections = {"model": {"name": "vit"}} if section == "model" else {}
    sections.setdefault(section, {})[key] = value
    assert error_of(build, **sections).startswith(says)


def test_aliased_lists_in_a_model_key_are_walked_once():
    # YAML aliases: 7 levels of 9 references each are a few lines of text but 9**7 lists when walked naively.
    def nested(leaf: str):
        text = f"l0: &l0 [{leaf}]\n" + "".join(
            f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 7))
        return yaml.safe_load(text)["l6"]

    import time

    start = time.perf_counter()
    assert build(model={"name": "vit", "x": nested("1, 2, 3")}).model.kwargs["x"]
    assert "got inf; must be a finite number" in error_of(build, model={"name": "vit", "x": nested("1, .inf")})
    assert time.perf_counter() - start < 10  # linear: milliseconds; exponential expansion: minutes


def test_long_values_are_shortened_in_messages():
    message = error_of(build, name=list(range(10_000)))
    assert len(message) < 200 and "characters" in message


def test_a_replaced_key_names_its_replacement():
    from config import from_dict

    with pytest.raises(UserError, match=r"train.amp: replaced by train.precision: auto \| fp32"):
        from_dict({"model": {"name": "vit"}, "data": {"name": "cifar10"}, "train": {"amp": False}})


# ----------------------------------------------------------------------------- base: (inheritance)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


PARENT = """
name: parent
model: {name: cnn_transformer, num_layers: 4}
data: {name: cifar10, limit_train: 100}
train: {epochs: 30, optimizer: sgd, lr: 0.05, schedule: multistep, milestones: [10, 20]}
"""


def test_a_child_states_only_what_differs_and_merges_deeply(tmp_path):
    write(tmp_path / "parent.yaml", PARENT)
    child = write(tmp_path / "variants" / "child.yaml",
                  "base: ../parent.yaml\nmodel: {num_layers: 2}\ntrain: {milestones: [5], epochs: 8}\n")
    (p,) = load_points([child])
    cfg = p.cfg
    assert cfg.model.name == "cnn_transformer" and cfg.model.kwargs == {"num_layers": 2}  # mapping merged
    assert cfg.train.milestones == [5]  # a list replaces, not appends
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.optimizer) == (8, 0.05, "sgd")
    assert cfg.data.limit_train == 100
    # --set applies after inheritance; the resolved config is flat and complete
    (p,) = load_points([child], ["train.epochs=3"])
    assert p.cfg.train.epochs == 3
    dumped = yaml.safe_load(dump_config(p.cfg))
    assert "base" not in dumped and dumped["train"]["lr"] == 0.05 and dumped["model"]["num_layers"] == 2


def test_bases_chain_and_a_list_of_bases_later_wins(tmp_path):
    write(tmp_path / "a.yaml", PARENT)
    write(tmp_path / "b.yaml", "base: a.yaml\ntrain: {lr: 0.01}\n")
    write(tmp_path / "other.yaml", "train: {lr: 0.02, epochs: 12}\n")
    c = write(tmp_path / "c.yaml", "base: [b.yaml, other.yaml]\nseed: 3\n")
    (p,) = load_points([c])
    assert (p.cfg.train.lr, p.cfg.train.epochs, p.cfg.seed, p.cfg.model.kwargs) == (0.02, 12, 3, {"num_layers": 4})


def test_a_child_naming_another_model_replaces_the_model_section(tmp_path):
    write(tmp_path / "a.yaml", PARENT)
    c = write(tmp_path / "c.yaml", "base: a.yaml\nmodel: {name: simple_cnn}\n")
    (p,) = load_points([c])
    assert p.cfg.model.name == "simple_cnn" and p.cfg.model.kwargs == {}  # num_layers belonged to the other model


def test_a_sweep_over_a_base_replaces_its_lists_and_null_removes_it(tmp_path):
    write(tmp_path / "a.yaml", PARENT + "sweep: {seed: [0, 1, 2], model.num_layers: [1, 2]}\n")
    c = write(tmp_path / "c.yaml", "base: a.yaml\nsweep: {seed: [7]}\n")
    ps = load_points([c])
    assert [(p.cfg.seed, p.cfg.model.kwargs["num_layers"]) for p in ps] == [(7, 1), (7, 2)]
    single = write(tmp_path / "single.yaml", "base: a.yaml\nsweep: null\n")
    assert len(load_points([single])) == 1
    assert load_config(single).train.epochs == 30


def test_a_base_cycle_is_one_line_naming_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n" + PARENT)
    write(tmp_path / "b.yaml", "base: sub/c.yaml\n")
    write(tmp_path / "sub" / "c.yaml", "base: ../a.yaml\n")
    message = error_of(load_points, [tmp_path / "a.yaml"])
    assert "a cycle" in message and message.count(" -> ") == 3
    chain = message.split("a cycle: ")[1]
    assert chain == " -> ".join(str(tmp_path / f) for f in ("a.yaml", "b.yaml", "sub/c.yaml", "a.yaml"))
    write(tmp_path / "self.yaml", "base: self.yaml\n")
    assert "a cycle" in error_of(load_points, [tmp_path / "self.yaml"])


def test_a_missing_or_malformed_base_names_the_file_that_refers_to_it(tmp_path):
    child = write(tmp_path / "child.yaml", "base: ../nowhere.yaml\nseed: 1\n")
    message = error_of(load_points, [child])
    assert message.startswith(f"{child}: base: ") and "nowhere.yaml: no such file" in message
    bad = write(tmp_path / "bad.yaml", "base: [1, 2]\n")
    assert "base: expected a config file" in error_of(load_points, [bad])
    broken = write(tmp_path / "broken.yaml", "train: {lr: [\n")
    assert error_of(load_points, [write(tmp_path / "c2.yaml", "base: broken.yaml\n")]).startswith(
        f"{broken}: malformed YAML")


def test_an_error_in_an_inherited_key_names_the_base_file(tmp_path):
    base = write(tmp_path / "base.yaml", PARENT.replace("lr: 0.05", "lr: fast"))
    child = write(tmp_path / "child.yaml", "base: base.yaml\nseed: 1\n")
    message = error_of(load_points, [child])
    assert message.startswith(f"{base} (base of {child}): train.lr: expected a number")
    # the same key fixed by the child, or set by --set: no base named
    assert "base of" not in error_of(load_points, [child], ["train.lr=slow"])
    write(tmp_path / "child2.yaml", "base: base.yaml\ntrain: {lr: nope}\n")
    assert error_of(load_points, [tmp_path / "child2.yaml"]).startswith("train.lr: expected a number")
    sweep = write(tmp_path / "sweep.yaml", "base: base.yaml\nsweep: {seed: [0, 1]}\n")
    assert f"(sweep point parent-cifar10-seed=0): {base} (base of {sweep}): train.lr" in error_of(load_points, [sweep])


# ----------------------------------------------------------------------------- run names


def test_a_run_is_named_after_its_dataset(tmp_path):
    from config.schema import run_name

    assert run_name("cnn_tr_small", "fashion_mnist") == "cnn_tr_small-fashion_mnist"
    assert run_name("cnn_tr_small_cifar10", "fashion_mnist") == "cnn_tr_small-fashion_mnist"  # replaced
    assert run_name("x-fashion_mnist", "mnist") == "x-mnist"  # the longest dataset name matches, not 'mnist'
    assert run_name("x_cifar100", "cifar10") == "x-cifar10"
    assert run_name(run_name("x", "mnist"), "mnist") == "x-mnist"  # twice = once
    assert run_name("cifar10", "cifar10") == "cifar10-cifar10"  # only an ending after - or _ is a dataset
    (p,) = load_points([CONFIG_DIR / "cnn_tr_small.yaml"], ["data.name=fashion_mnist"])
    assert p.name == p.cfg.name == p.cfg.run_name == "cnn_tr_small-fashion_mnist"
    (p,) = load_points([write(tmp_path / "x.yaml", "model: {name: vit}\ndata: {name: mnist}\n")])
    assert p.cfg.run_name == "vit-mnist"
    (p,) = load_points([write(tmp_path / "t.yaml", "model: {name: timm/resnet18}\ndata: {name: mnist}\n")])
    assert p.cfg.run_name == "timm_resnet18-mnist"  # one directory name


def test_a_run_is_named_after_the_model_it_trains(tmp_path):
    """A name belongs to the model(s) in effect where it was written: changing the model later (--set, a sweep
    axis, a child file) drops it, and the run is named after what it trains; never simple_cnn-... for a ResNet."""
    fmnist = CONFIG_DIR / "fashion_mnist.yaml"  # name: simple_cnn, model.name: simple_cnn
    names = lambda paths, sets=(): [p.name for p in load_points(paths, list(sets))]  # noqa: E731
    assert names([fmnist]) == ["simple_cnn-fashion_mnist"]
    assert names([fmnist], ["model.name=timm/resnet10t"]) == ["timm_resnet10t-fashion_mnist"]
    assert names([fmnist], ["model.name=simple_cnn"]) == ["simple_cnn-fashion_mnist"]  # the same model: kept
    assert names([fmnist], ["model.name=resnet18", "name=mine"]) == ["mine-fashion_mnist"]  # named with it
    assert names([fmnist], ["name=mine"]) == ["mine-fashion_mnist"]
    assert names([fmnist], ["sweep.model.name=[simple_cnn, resnet18]"]) == [
        "simple_cnn-fashion_mnist", "resnet18-fashion_mnist"]
    assert names([fmnist], ["sweep.model.name=[resnet18]", "name=mine"]) == ["mine-fashion_mnist-resnet18"]
    # a sweep over models in the file that names it keeps its name (fmnist_sizes: name: sizes)
    assert names([CONFIG_DIR / "sweeps" / "fmnist_sizes.yaml"], ["sweep.seed=[0]"])[-1] == (
        "sizes-fashion_mnist-cnn_tr_large-seed=0")
    # a child file that changes its base's model drops the base's name; one that names itself keeps its name
    write(tmp_path / "child.yaml", f"base: {fmnist}\nmodel: {{name: resnet18}}\n")
    assert names([tmp_path / "child.yaml"]) == ["resnet18-fashion_mnist"]
    write(tmp_path / "named.yaml", f"base: {fmnist}\nname: r18\nmodel: {{name: resnet18}}\n")
    assert names([tmp_path / "named.yaml"]) == ["r18-fashion_mnist"]
    write(tmp_path / "sweep.yaml", f"base: {fmnist}\nsweep: {{model: [{{name: resnet18}}, {{name: vit, depth: 2}}]}}\n")
    assert names([tmp_path / "sweep.yaml"]) == ["resnet18-fashion_mnist", "vit-fashion_mnist-depth=2"]
    # a child that only names the run keeps its base's model
    write(tmp_path / "renamed.yaml", f"base: {fmnist}\nname: cnn\n")
    assert names([tmp_path / "renamed.yaml"]) == ["cnn-fashion_mnist"]
    assert names([tmp_path / "renamed.yaml"], ["model.name=resnet18"]) == ["resnet18-fashion_mnist"]


def test_the_dataset_names_in_config_are_the_registered_ones():
    from config.schema import DATASET_NAMES
    from data import list_datasets

    assert sorted(DATASET_NAMES) == list_datasets()


def test_shipped_config_names_carry_no_dataset():
    from config.schema import DATASET_NAMES

    for path in CONFIGS:
        name = yaml.safe_load(path.read_text()).get("name") or ""
        assert not any(name.endswith(d) for d in DATASET_NAMES), (path, name)


# ----------------------------------------------------------------------------- settings that cannot take effect


@pytest.mark.parametrize("train, says", [
    ({"schedule": "multistep", "milestones": [5, 10], "epochs": 10}, "train.milestones: 10 at or after the last epoch"),
    ({"optimizer": "adamw", "momentum": 0.5}, "train.momentum: SGD only; ignored with optimizer adamw"),
    ({"optimizer": "adamw", "nesterov": True}, "train.nesterov: SGD only"),
    ({"schedule": "onecycle", "min_lr": 1.0e-5}, "train.min_lr: the floor of schedule cosine; ignored with onecycle"),
    ({"schedule": "cosine", "milestones": [3]}, "train.milestones: only used by schedule multistep"),
    ({"schedule": "cosine", "gamma": 0.5}, "train.gamma: only used by schedules multistep and step"),
    ({"schedule": "step", "step_size": 20, "epochs": 10}, "train.step_size: 20 epochs, not shorter than the run"),
    ({"schedule": "onecycle", "warmup_epochs": 10, "epochs": 10}, "train.warmup_epochs: 10, the whole run"),
])
def test_settings_that_cannot_take_effect_are_warned_about(train, says):
    from config.schema import setting_warnings

    found = setting_warnings(build(train=train))
    assert len(found) == 1 and found[0].startswith(says) and "\n" not in found[0]


def test_no_warnings_for_defaults_or_shipped_configs():
    from config.schema import setting_warnings
    from config.sweep import point_warnings

    assert setting_warnings(build()) == []
    assert setting_warnings(build(output={"checkpoints": True, "checkpoint_every_steps": 5})) == []
    assert "output.checkpoint_every_steps: ignored" in setting_warnings(
        build(output={"checkpoints": False, "checkpoint_every_steps": 5}))[0]
    assert point_warnings(load_points(CONFIGS, warn=False)) == []


def test_warnings_print_once_per_call_and_the_run_goes_on(tmp_path, capsys):
    sweep = write(tmp_path / "s.yaml", "model: {name: vit}\ndata: {name: mnist}\n"
                                      "train: {momentum: 0.5}\nsweep: {seed: [0, 1, 2]}\n")
    capsys.readouterr()
    assert len(load_points([sweep])) == 3
    err = capsys.readouterr().err
    assert err == f"warning: {sweep}: train.momentum: SGD only; ignored with optimizer adamw\n"
