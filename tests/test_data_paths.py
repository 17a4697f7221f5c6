"""Where data and caches live: explicit path, metajax variable, XDG, home."""

import os

import pytest

from metajax.data import paths

VARIABLES = ("METAJAX_DATA_DIR", "METAJAX_CACHE_DIR", "XDG_DATA_HOME",
             "XDG_CACHE_HOME")


@pytest.fixture
def home(tmp_path, monkeypatch):
  """A fresh HOME with none of the variables set."""
  for name in VARIABLES:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  return tmp_path / "home"


def test_defaults_are_the_xdg_folders_in_home(home):
  assert paths.data_dir() == str(home / ".local" / "share" / "metajax")
  assert paths.cache_dir() == str(home / ".cache" / "metajax")
  assert not os.path.exists(home)  # nothing is created


def test_xdg_variables(home, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdata"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xcache"))
  assert paths.data_dir() == str(tmp_path / "xdata" / "metajax")
  assert paths.cache_dir() == str(tmp_path / "xcache" / "metajax")


@pytest.mark.parametrize("value", ["", "relative/dir"])
def test_empty_or_relative_xdg_variables_are_ignored(home, monkeypatch,
                                                     value):
  monkeypatch.setenv("XDG_DATA_HOME", value)
  monkeypatch.setenv("XDG_CACHE_HOME", value)
  assert paths.data_dir() == str(home / ".local" / "share" / "metajax")
  assert paths.cache_dir() == str(home / ".cache" / "metajax")


def test_metajax_variables_win_over_xdg(home, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdata"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xcache"))
  monkeypatch.setenv("METAJAX_DATA_DIR", "~/data")
  monkeypatch.setenv("METAJAX_CACHE_DIR", str(tmp_path / "cache"))
  assert paths.data_dir() == str(home / "data")
  assert paths.cache_dir() == str(tmp_path / "cache")
  monkeypatch.setenv("METAJAX_DATA_DIR", "")  # empty: not set
  assert paths.data_dir() == str(tmp_path / "xdata" / "metajax")


def test_an_explicit_path_wins(home, tmp_path, monkeypatch):
  monkeypatch.setenv("METAJAX_DATA_DIR", str(tmp_path / "env"))
  monkeypatch.setenv("METAJAX_CACHE_DIR", str(tmp_path / "env"))
  assert paths.data_dir(str(tmp_path / "mine")) == str(tmp_path / "mine")
  assert paths.cache_dir("~/c") == str(home / "c")
  monkeypatch.chdir(tmp_path)
  assert paths.data_dir("rel") == str(tmp_path / "rel")  # made absolute
  assert paths.data_dir("") == str(tmp_path / "env")  # empty: not given
