"""Turning section results into the JSON file, the terminal tables and a markdown section for docs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.common import SectionResult, Table, clean, fmt, render_markdown, render_text, targets_table

TITLES = {
    "cold": "Cold process per file vs warm service",
    "overhead": "Service overhead",
    "engines": "Engines",
    "burst": "Burst throughput",
    "responsiveness": "Responsiveness while busy",
    "memory": "Memory",
    "journal": "Journal scale",
    "scale": "Scale-out on one Redis queue",
    "long": "Long recordings",
    "batched": "Batched decoding and diarization at any length",
}


def section_entry(result: SectionResult, status: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "status": status,
        "description": result.description,
        "targets": [t.as_dict() for t in result.targets],
        "tables": [t.as_dict() for t in result.tables],
        "notes": result.notes,
        "data": clean(result.data),
    }
    if result.errors:
        entry["error"] = "; ".join(result.errors)
    return entry


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write atomically: a reader (or a crash half-way) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(clean(results), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _tables(entry: dict[str, Any]) -> list[Table]:
    return [Table(t["title"], t["headers"], t["rows"]) for t in entry.get("tables", [])]


def _targets(entry: dict[str, Any]) -> Table:
    table = Table("Targets", ["target", "goal", "measured", "result"])
    for t in entry.get("targets", []):
        measured = "-" if t["measured"] is None else f"{fmt(t['measured'])}{t['unit']}"
        table.rows.append([t["name"], t["goal"], measured, t["result"]])
    return table


def section_text(result: SectionResult) -> str:
    parts = [render_text(t) for t in result.tables]
    if result.targets:
        parts.append(render_text(targets_table(result.targets)))
    parts += [f"note: {n}" for n in result.notes]
    parts += [f"error: {e}" for e in result.errors]
    return "\n\n".join(parts)


def summary_text(results: dict[str, Any]) -> str:
    table = Table("Summary", ["section", "status", "target", "measured", "result"])
    for name, entry in results["sections"].items():
        if not entry.get("targets"):
            table.rows.append([name, entry["status"], entry.get("error", "-")[:80], "", ""])
        for t in entry.get("targets", []):
            measured = "-" if t["measured"] is None else f"{fmt(t['measured'])}{t['unit']}"
            table.rows.append([name, entry["status"], f"{t['name']} {t['goal']}", measured, t["result"]])
    wall = results["meta"].get("wall_s")
    if results.get("error"):
        table.title += f" (set-up failed: {results['error']})"
    return render_text(table) + (f"\n\nwall time {wall / 60:.1f} min" if wall is not None else "")


def _machine_table(meta: dict[str, Any]) -> Table:
    m = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    table = Table("Machine", ["", ""])
    table.rows += [
        ["CPU", m["cpu"]],
        [
            "cores",
            f"{m['cores_available']} available "
            f"({m['logical_cores']} logical, {m['physical_cores']} physical)",
        ],
        ["RAM", f"{m['ram_gib']} GiB"],
        ["OS", m["os"]],
        ["Python", m["python"]],
        ["libraries", versions],
        ["threads", str(meta["threads"])],
        [
            "load average (1, 5, 15 min) at start / end",
            f"{meta.get('load_average_start')} / {meta.get('load_average_end')}",
        ],
    ]
    return table


def markdown(results: dict[str, Any]) -> str:
    """A section ready to paste into docs/benchmarks.md."""
    meta = results["meta"]
    wall = meta.get("wall_s")
    lines = [
        f"## Results of {meta['started'][:10]}",
        "",
        f"`python scripts/{meta['command']}` took {wall / 60:.1f} min"
        f"{' (--quick: smoke-test sizes, not for comparison)' if meta['quick'] else ''}. "
        f"{meta['repeat']} repetition(s), medians; beam size {meta['beam_size']}, "
        f"{meta['threads']} inference threads for every service process and in-process baseline.",
        "",
        render_markdown(_machine_table(meta)),
        "",
    ]
    if results.get("error"):
        lines += [f"**Set-up failed:** {results['error']}", ""]
    overview = Table("All targets", ["section", "target", "goal", "measured", "result"])
    for name, entry in results["sections"].items():
        for t in entry.get("targets", []):
            measured = "-" if t["measured"] is None else f"{fmt(t['measured'])}{t['unit']}"
            overview.rows.append([TITLES.get(name, name), t["name"], t["goal"], measured, t["result"]])
    if overview.rows:
        lines += [render_markdown(overview), ""]
    for name, entry in results["sections"].items():
        number = list(TITLES).index(name) + 1 if name in TITLES else "-"
        lines += [f"### {number}. {TITLES.get(name, name)}", ""]
        if entry.get("description"):
            lines += [entry["description"], ""]
        if entry.get("status") != "ok":
            lines += [f"**Error:** {entry.get('error', 'unknown')}", ""]
        for table in _tables(entry):
            lines += [render_markdown(table), ""]
        if entry.get("targets"):
            lines += [render_markdown(_targets(entry)), ""]
        for note in entry.get("notes", []):
            lines += [f"_{note}_", ""]
    return "\n".join(lines)
