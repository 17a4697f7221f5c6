"""Where datasets and their derived caches live on this machine.

Two folders, following the XDG base directory convention that Linux desktop
and command-line tools share:

* `data_dir`: datasets as published (downloads, zips, CSVs, pickles), which
  take time or a licence to get again. An explicit path wins; then
  `$METAJAX_DATA_DIR`; then `$XDG_DATA_HOME/metajax`, by default
  `~/.local/share/metajax`.
* `cache_dir`: arrays derived from them (resized images, decoded splits),
  which a run rebuilds when they are missing, so the folder may be deleted at
  any time. An explicit path wins; then `$METAJAX_CACHE_DIR`; then
  `$XDG_CACHE_HOME/metajax`, by default `~/.cache/metajax`.

Below `data_dir`, each dataset has its own folder, e.g. `omniglot/` and
`knowledge_tracing/<name>/`. Neither function creates the folder: the loader
or downloader that writes into it does.
"""

import os
from typing import Optional

DATA_ENV = "METAJAX_DATA_DIR"
CACHE_ENV = "METAJAX_CACHE_DIR"


def _from_env(name: str) -> Optional[str]:
  # An empty variable counts as unset, as the XDG specification asks.
  value = os.environ.get(name, "")
  return value or None


def _resolve(explicit: Optional[str], env: str, xdg_env: str,
             xdg_default: str) -> str:
  path = explicit or _from_env(env)
  if path is None:
    base = _from_env(xdg_env)
    # XDG: a relative $XDG_*_HOME is invalid and must be ignored.
    if base is None or not os.path.isabs(os.path.expanduser(base)):
      base = os.path.join("~", xdg_default)
    path = os.path.join(base, "metajax")
  return os.path.abspath(os.path.expanduser(os.fspath(path)))


def data_dir(explicit: Optional[str] = None) -> str:
  """The folder that holds datasets, as an absolute path.

  Args:
    explicit: a folder given by the caller (e.g. a `--data_dir` flag); an
      empty string or None means not given. "~" is expanded.

  Returns:
    `explicit`, else `$METAJAX_DATA_DIR`, else `$XDG_DATA_HOME/metajax`, else
    `~/.local/share/metajax`. The folder may not exist yet.
  """
  return _resolve(explicit, DATA_ENV, "XDG_DATA_HOME",
                  os.path.join(".local", "share"))


def cache_dir(explicit: Optional[str] = None) -> str:
  """The folder for preprocessed arrays derived from datasets, absolute.

  Args:
    explicit: a folder given by the caller (e.g. a `--cache_dir` flag); an
      empty string or None means not given. "~" is expanded.

  Returns:
    `explicit`, else `$METAJAX_CACHE_DIR`, else `$XDG_CACHE_HOME/metajax`,
    else `~/.cache/metajax`. The folder may not exist yet.
  """
  return _resolve(explicit, CACHE_ENV, "XDG_CACHE_HOME", ".cache")
