"""Config input that costs no more to read than its size: YAML aliases and duplicate keys.

A few hundred bytes of nested aliases to mappings (a "billion laughs") once grew memory exponentially before
any check ran; a key written twice silently lost its first value. Each is now one line naming the file.
The unit tests call the loader; the system tests run ``python main.py`` in a subprocess under a memory limit.
"""
from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from config.loader import MAX_CONFIG_BYTES, apply_override
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
@pytest.mark.parametrize("case", ["alias bomb"])
def test_main_refuses_exploding_configs_in_one_line_within_a_memory_limit(tmp_path, case):
    cfg, says = write(tmp_path / "bomb.yaml", alias_bomb()), "alias *a0 repeats a mapping"
    p = run_bounded(cfg)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1 and says in p.stderr, p.stderr[:2000]
