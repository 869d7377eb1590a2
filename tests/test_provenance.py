"""Provenance: results can be traced to the commit, versions and device that made them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from stnbench.provenance import git_state, provenance

REPO = Path(__file__).resolve().parents[1]


def test_provenance_names_the_checkout_commit_and_versions():
    info = provenance()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert info["provenance/git_commit"] == head
    assert isinstance(info["provenance/git_dirty"], bool)
    assert info["provenance/torch"] in (torch.__version__, torch.__version__.split("+")[0])
    assert info["provenance/lightning"] and info["provenance/python"].count(".") == 2
    assert info["provenance/device"].startswith(("cpu:", "cuda:", "mps"))
    assert all(value is None or isinstance(value, (str, bool)) for value in info.values())  # HParams-safe


def test_dirty_flag_follows_the_working_tree(tmp_path):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "-C", str(tmp_path), "add", "a.py"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-qm", "a"], check=True)
    commit, dirty = git_state(tmp_path)
    assert commit is not None and len(commit) == 40 and dirty is False
    (tmp_path / "notes.txt").write_text("an untracked note is not code\n")
    git_state.cache_clear()
    assert git_state(tmp_path) == (commit, False)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "fast.yaml").write_text("lr: 1\n")  # a new, uncommitted config option
    git_state.cache_clear()
    assert git_state(tmp_path) == (commit, True)
    (tmp_path / "conf" / "fast.yaml").unlink()
    (tmp_path / "a.py").write_text("x = 2\n")
    git_state.cache_clear()
    assert git_state(tmp_path) == (commit, True)


def test_no_error_outside_a_git_checkout(tmp_path):
    git_state.cache_clear()
    assert git_state(tmp_path) == (None, None)  # tmp_path lies outside any git checkout
    git_state.cache_clear()
