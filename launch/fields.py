"""Every config field with its value, its default and the comment that documents it.

    python -m launch.main --config experiments/configs/dfedsam_fmnist.py --print_config
    python -m launch.fields [experiments/configs/default.py]     (the same, without launch.main)

The comments are read from the config files' source: a `c.section.field = value  # comment`
line, or comment lines directly above the assignment (experiments/configs/default.py documents
every field; a per-experiment config's own comments take precedence).
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys

from ml_collections import config_dict

_ASSIGN = re.compile(r"^\s*c\.([\w.]+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")
_COMMENT = re.compile(r"^\s*#\s?(.*)$")


def field_comments(source: str) -> dict[str, str]:
  """{dotted field: comment} from `c.a.b = ...  # comment` lines (and comments above them), in
  the order of the assignments; a field assigned without a comment maps to ''."""
  comments, pending = {}, []
  for line in source.splitlines():
    m = _COMMENT.match(line)
    if m:
      pending.append(m.group(1).strip())
      continue
    m = _ASSIGN.match(line)
    if m:
      field, _, trailing = m.groups()
      text = " ".join(pending + ([trailing.strip()] if trailing else []))
      comments.setdefault(field, text)
    pending = []
  return comments


def flat_fields(config, prefix: str = "") -> dict[str, object]:
  out = {}
  for key in config.keys():
    value = config[key]
    if isinstance(value, config_dict.ConfigDict):
      out.update(flat_fields(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _sources_of(module) -> list[str]:
  """The module's source and those of the experiment configs it imports (default.py first)."""
  sources, seen = [], set()

  def visit(mod):
    if mod.__name__ in seen:
      return
    seen.add(mod.__name__)
    for value in vars(mod).values():
      other = value if inspect.ismodule(value) else inspect.getmodule(value)
      if other is not None and other.__name__.startswith("experiments.configs"):
        visit(other)
    try:
      sources.append(inspect.getsource(mod))
    except (OSError, TypeError):
      pass

  visit(importlib.import_module("experiments.configs.default"))
  visit(module)
  return sources


def describe(config, module=None) -> str:
  """One line per field: `name = value  # comment`, with the default where it differs."""
  from experiments.configs import default
  comments = {}
  for source in _sources_of(module or default):
    for field, text in field_comments(source).items():
      if text or field not in comments:  # an uncommented override keeps default.py's comment
        comments[field] = text
  defaults = flat_fields(default.get_config())
  values = flat_fields(config)
  order = {f: i for i, f in enumerate(comments)}  # as default.py declares them
  lines = []
  for field in sorted(values, key=lambda f: (order.get(f, len(order)), f)):
    value = values[field]
    line = f"{field} = {value!r}"
    if field in defaults and defaults[field] != value:
      line += f"  (default: {defaults[field]!r})"
    if comments.get(field):
      line += f"  # {comments[field]}"
    lines.append(line)
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  from launch import cli
  config_arg = argv[1] if len(argv) > 1 else "experiments/configs/default.py"
  print(describe(cli.config_from_arg(config_arg), cli.load_config_module(config_arg)))


if __name__ == "__main__":
  main(sys.argv)
