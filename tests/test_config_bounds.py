"""Config input that costs no more to read than its size: YAML aliases, duplicate keys, base: graphs.

A few hundred bytes of nested aliases to mappings (a "billion laughs"), or a chain of files each naming its
base twice, once grew memory or time exponentially before any check ran. Each is now one line naming the file.
The unit tests call the loader; the system tests run ``python main.py`` in a subprocess under a memory limit.
"""
from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from config.loader import MAX_BASE_DEPTH, MAX_CONFIG_BYTES, apply_override, read_config
from config.sweep import load_points
from core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
VALID = "model: {name: vit}\ndata: {name: cifar10}\n"


def error_of(fn, *args) -> str:
    with pytest.raises(UserError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message, "user errors are one line"
    return message


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def alias_bomb(levels: int = 10) -> str:
    """The fault hunt's file: each level a mapping of 9 aliases to the level below, 9**10 leaves in all."""
    lines = [VALID, "x0: &a0 {x: 1, y: 1}\n"]
    lines += [f"x{i}: &a{i} {{{', '.join(f'k{j}: *a{i - 1}' for j in range(9))}}}\n" for i in range(1, levels + 1)]
    return "".join(lines) + f"sweep: {{model: *a{levels}}}\n"


def diamond(root: Path, levels: int, lr: str = "0.5") -> Path:
    """``levels`` levels of two files each, ``l<i>`` and ``r<i>``, both naming ``[l<i-1>, r<i-1>]`` as bases:
    2**levels paths from the top file down to ``base.yaml``. Each file adds its own model key and sets seed."""
    write(root / "base.yaml", VALID + f"train: {{lr: {lr}}}\nseed: 0\n")
    below = "[base.yaml]"
    for i in range(1, levels + 1):
        for side in "lr":
            write(root / f"{side}{i}.yaml", f"base: {below}\nmodel: {{{side}{i}: {i}}}\nseed: {i}\n")
        below = f"[l{i}.yaml, r{i}.yaml]"
    return write(root / "top.yaml", f"base: {below}\n")


# ----------------------------------------------------------------------------- duplicate keys


def test_a_duplicate_top_level_key_names_both_lines(tmp_path):
    path = write(tmp_path / "c.yaml", "model: {name: vit}\ntrain: {lr: 0.1}\ndata: {name: cifar10}\ntrain: {epochs: 2}\n")
    assert error_of(load_points, [path]) == (f"{path}: duplicate key 'train' (lines 2 and 4); "
                                             f"a key may appear once per mapping")


def test_a_duplicate_nested_key_names_both_lines(tmp_path):
    path = write(tmp_path / "c.yaml", VALID + "train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n")
    assert error_of(load_points, [path]) == (f"{path}: duplicate key 'lr' (lines 4 and 6); "
                                             f"a key may appear once per mapping")
    deep = write(tmp_path / "deep.yaml", VALID.replace("vit}", "vit, dropout: [{a: 1, a: 2}]}"))
    assert error_of(load_points, [deep]) == f"{deep}: duplicate key 'a' (line 1); a key may appear once per mapping"


def test_a_duplicate_key_in_a_set_value():
    assert error_of(apply_override, {}, "model.x={a: 1, a: 2}").startswith("--set model.x: duplicate key 'a'")


# ----------------------------------------------------------------------------- aliases


def test_an_alias_to_a_mapping_or_list_is_refused_before_it_expands(tmp_path):
    path = write(tmp_path / "bomb.yaml", alias_bomb())
    assert len(path.read_bytes()) < 1200
    message = error_of(load_points, [path])
    assert message.startswith(f"{path}: line 4: alias *a0 repeats a mapping (anchored at line 3); an alias may "
                              f"repeat only a single value")
    lists = write(tmp_path / "lists.yaml", VALID + "train: {milestones: &m [1, 2]}\nx: *m\n")
    assert error_of(load_points, [lists]).startswith(f"{lists}: line 4: alias *m repeats a list (anchored at line 3)")
    selfref = write(tmp_path / "self.yaml", "a: &a {b: *a}\n")
    assert "alias *a repeats a mapping" in error_of(load_points, [selfref])
    assert error_of(apply_override, {}, "model.x={a: &a {x: 1}, b: [*a, *a]}").startswith(
        "--set model.x: line 1: alias *a repeats a mapping (anchored at line 1)")


def test_an_alias_to_a_single_value_is_kept(tmp_path):
    path = write(tmp_path / "c.yaml", VALID + "train: {lr: &lr 0.25, epochs: &n 3, min_lr: *lr}\nseed: *n\n")
    (p,) = load_points([path])
    assert p.cfg.train.min_lr == p.cfg.train.lr == 0.25 and p.cfg.seed == p.cfg.train.epochs == 3
    shared = write(tmp_path / "shared.yaml", "model: {name: &m vit}\ndata: {name: cifar10}\nname: *m\n")
    assert load_points([shared])[0].cfg.model.name == "vit"


def test_aliases_to_single_values_may_not_repeat_more_than_a_configs_size(tmp_path):
    long = "x" * (MAX_CONFIG_BYTES // 8)
    path = write(tmp_path / "c.yaml", f"name: &s {long}\nmany: [{', '.join(['*s'] * 9)}]\n")
    assert error_of(load_points, [path]) == (f"{path}: line 2: alias *s: aliases repeat more than "
                                             f"{MAX_CONFIG_BYTES:,} characters in all; a config is at most that large")


# ----------------------------------------------------------------------------- base: graphs


def test_a_40_level_diamond_reads_each_file_once_and_merges_like_a_chain(tmp_path, monkeypatch):
    import config.loader

    reads = []
    read_file = config.loader._read_file
    monkeypatch.setattr(config.loader, "_read_file", lambda path, *a: reads.append(path) or read_file(path, *a))
    top = diamond(tmp_path, 40)
    raw = read_config(top)
    assert len(reads) == len(set(reads)) == 2 * 40 + 2  # 2**40 paths without memoising
    sides = {f"{side}{i}": i for i in range(1, 41) for side in "lr"}
    assert raw.data == {"model": {"name": "vit", **sides}, "data": {"name": "cifar10"}, "train": {"lr": 0.5},
                        "seed": 40}
    assert raw.origin("model.l7") == str(tmp_path / "l7.yaml") and raw.origin("seed") == str(tmp_path / "r40.yaml")
    assert raw.origin("train.lr") == raw.origin("model.name") == str(tmp_path / "base.yaml")
    (p,) = load_points([top])
    assert p.cfg.model.kwargs == sides and (p.cfg.seed, p.cfg.train.lr) == (40, 0.5)


def test_an_error_deep_in_a_diamond_names_the_file_that_wrote_it(tmp_path):
    top = diamond(tmp_path, 30, lr="fast")
    message = error_of(load_points, [top])
    assert message.startswith(f"{tmp_path / 'base.yaml'} (base of {top}): train.lr: expected a number")


def test_a_base_named_twice_in_one_list_is_refused(tmp_path):
    write(tmp_path / "f0.yaml", VALID)
    for i in range(1, 31):  # the fault hunt's chain: 2**30 merges without a check
        write(tmp_path / f"f{i}.yaml", f"base: [f{i - 1}.yaml, ./f{i - 1}.yaml]\nseed: {i}\n")
    assert error_of(load_points, [tmp_path / "f30.yaml"]) == (f"{tmp_path / 'f1.yaml'}: base: ./f0.yaml: named twice "
                                                               f"in this list; name each base once")


def test_a_base_chain_deeper_than_the_cap_is_one_line_naming_it(tmp_path):
    write(tmp_path / "f0.yaml", VALID)
    for i in range(1, MAX_BASE_DEPTH + 1):
        write(tmp_path / f"f{i}.yaml", f"base: f{i - 1}.yaml\nseed: {i}\n")
    assert load_points([tmp_path / f"f{MAX_BASE_DEPTH - 1}.yaml"])[0].cfg.seed == MAX_BASE_DEPTH - 1  # at the cap
    top = tmp_path / f"f{MAX_BASE_DEPTH}.yaml"
    message = error_of(load_points, [top])
    at = tmp_path / "f1.yaml"
    assert message == (f"{at}: base: f0.yaml: a chain of more than {MAX_BASE_DEPTH} files ({top} -> "
                       f"{tmp_path / f'f{MAX_BASE_DEPTH - 1}.yaml'} -> ... ({MAX_BASE_DEPTH - 3} more) -> {at} -> "
                       f"{tmp_path / 'f0.yaml'}); a base: chain may be at most {MAX_BASE_DEPTH} files deep")


def test_a_cycle_below_a_diamond_is_still_caught(tmp_path):
    write(tmp_path / "top.yaml", "base: [left.yaml, right.yaml]\n")
    write(tmp_path / "left.yaml", "base: shared.yaml\n")
    write(tmp_path / "right.yaml", "base: shared.yaml\n")
    write(tmp_path / "shared.yaml", "base: right.yaml\n" + VALID)
    message = error_of(load_points, [tmp_path / "top.yaml"])
    assert message.endswith("a cycle: " + " -> ".join(str(tmp_path / f"{n}.yaml")
                                                      for n in ("top", "left", "shared", "right", "shared")))


# ----------------------------------------------------------------------------- the CLI, under a memory limit

MEMORY_LIMIT = 2 << 30  # bytes of address space; the expanded bomb needs far more


def run_bounded(cfg: Path) -> subprocess.CompletedProcess:
    """``python main.py --cfg CFG --dry-run`` with at most ``MEMORY_LIMIT`` of memory and 60 s. Nothing imports
    torch before the config is read, so the limit leaves the interpreter room to start."""
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([sys.executable, str(ROOT / "main.py"), "--cfg", str(cfg), "--dry-run"], cwd=cfg.parent,
                          capture_output=True, text=True, timeout=60, preexec_fn=limit_memory)


@pytest.mark.system
@pytest.mark.parametrize("case", ["alias bomb", "a base named twice, 30 levels", "base diamond, 30 levels"])
def test_main_refuses_exploding_configs_in_one_line_within_a_memory_limit(tmp_path, case):
    if case == "alias bomb":
        cfg, says = write(tmp_path / "bomb.yaml", alias_bomb()), "alias *a0 repeats a mapping"
    elif case == "base diamond, 30 levels":
        cfg, says = diamond(tmp_path, 30, lr="fast"), "train.lr: expected a number"
    else:
        write(tmp_path / "f0.yaml", VALID)
        for i in range(1, 31):
            write(tmp_path / f"f{i}.yaml", f"base: [f{i - 1}.yaml, f{i - 1}.yaml]\n")
        cfg, says = tmp_path / "f30.yaml", "named twice in this list"
    p = run_bounded(cfg)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1 and says in p.stderr, p.stderr[:2000]
