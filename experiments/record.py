"""What every experiment's JSON starts with: the command that repeats it, the date, the machine, the data."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from mitoseg import train


def header(script: str, argv: list[str] | None, data: str, **extra) -> dict:
    """The record's head: `python experiments/<script> <arguments>` (argv None: this process's), the
    date, `train.versions()` and the data's description, then `extra`."""
    args = sys.argv[1:] if argv is None else argv
    return {"command": f"python experiments/{Path(script).name} {shlex.join(args)}".rstrip(),
            "date": time.strftime("%Y-%m-%d"), "machine": train.versions(), "data": data, **extra}


def save(out: str | Path, record: dict, markdown: str) -> None:
    """Write `record` as JSON to `out` (its folder made) and `markdown` beside it (.md, one final newline),
    ending with the record's `provenance` when the markdown does not name its command yet."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    if "Command:" not in markdown and all(k in record for k in ("command", "date", "machine", "data")):
        markdown = markdown.rstrip("\n") + "\n\n" + provenance(record)
    out.with_suffix(".md").write_text(markdown.rstrip("\n") + "\n")


def short(run: str | Path) -> str:
    """A run folder named by its last two parts (e.g. context/context0_seed0), no machine path."""
    return "/".join(Path(run).parts[-2:])


def provenance(meta: dict) -> str:
    """The sentence a table's caption ends with: the data, machine, date and command of `header`'s record."""
    machine = meta["machine"]
    return (f"Data: {meta['data']}. Machine: {machine['cpu']} ({machine['cpu_count']} cores). "
            f"Date: {meta['date']}. Command: `{meta['command']}`")
