"""Shell completion scripts generated from meshctl's own parser (``meshctl completion bash|zsh``).

The script holds, for each command path (``traffic:split``), the words that may follow: subcommands,
options and fixed choices; bash completes from that table, zsh through ``bashcompinit``. Nothing runs
meshctl at completion time, so completing is instant.
"""

from __future__ import annotations

import argparse
import shlex


def _table(parser: argparse.ArgumentParser, path: str, out: dict[str, list[str]]) -> None:
    words: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                _table(child, f"{path}:{name}" if path else name, out)
        elif action.option_strings:
            words.extend(o for o in action.option_strings if o.startswith("--"))
        elif action.choices:
            words.extend(str(c) for c in action.choices)
    out[path] = sorted(dict.fromkeys(words))


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (bash or zsh) of the whole ``parser``."""
    table: dict[str, list[str]] = {}
    _table(parser, "", table)
    cases = "\n".join(f"    {shlex.quote(path or '_')}) words={shlex.quote(' '.join(words))} ;;"
                      for path, words in sorted(table.items()))
    body = f"""_meshctl() {{
  local cur path w words
  cur="${{COMP_WORDS[COMP_CWORD]}}"
  path=""
  for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
    case "$w" in -*) continue ;; esac
    case "$_meshctl_paths" in *"|${{path:+$path:}}$w|"*) path="${{path:+$path:}}$w" ;; esac
  done
  case "${{path:-_}}" in
{cases}
    *) words="" ;;
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
"""
    setup = f"_meshctl_paths={shlex.quote('|' + '|'.join(p for p in table if p) + '|')}\n"
    if shell == "zsh":
        return "#compdef meshctl\nautoload -U +X bashcompinit && bashcompinit\n" + setup + body + \
            "complete -F _meshctl meshctl\n"
    return setup + body + "complete -F _meshctl meshctl\n"
