"""List the built-in models."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    import json

    from hatstream.models.registry import BUILTINS, default_model_name

    defaults: dict[str, list[str]] = {}
    for s in (2, 3, 4):
        defaults.setdefault(default_model_name(s), []).append(f"x{s}")
    rows = []
    for b in BUILTINS.values():
        scales = "any" if b.scales is None else ",".join(f"x{s}" for s in b.scales)
        status = "installed" if b.available() else "not installed"
        note = f"default for {'/'.join(defaults[b.name])}" if b.name in defaults else ""
        rows.append({"name": b.name, "scales": scales, "status": status, "description": b.description, "note": note})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['scales']:<6} {r['status']:<13} {r['description']}"
              + (f"  [{r['note']}]" if r["note"] else ""))
    return 0
