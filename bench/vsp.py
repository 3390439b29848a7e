"""VSP spatial planning (Mirage ``test_direct.jsonl``): loader, prompt, path simulation and scoring.

Each line: ``text_input`` (prompt with a literal ``<image>`` placeholder; asks for the path in ``\\boxed{}``),
``image_input`` (PNG path), ``map_id``, ``map_desc`` (2-D int grid: ``1`` start, ``2`` goal, ``-1`` hole, ``0`` safe).
There is no gold path: a reply is correct iff its path, walked on the map, succeeds.

Image paths: in the real Mirage release they read ``./data/vsp_spatial_planning/imgs_test/...``, relative to the
Mirage REPOSITORY root (where ``src/test.py`` runs), not to the jsonl. ``image_root`` (``--image-root``) says where
they are relative to; by default the first folder, from the jsonl's own folder upwards, in which the first record's
image exists (the repository root for the real layout, the jsonl's folder for a flat copy). The prompt keeps the
``<image>`` placeholder: with a profile that sets ``prompt.image_at_placeholder`` (mirage) the image is put there, as
Mirage trains and tests; otherwise the placeholder is removed and the image goes first.

Simulation (Mirage ``src/task.py::simulate_vsp``): the path string is upper-cased and every character other than
U/D/L/R is dropped (so "Right, Down" -> R, D); the walk starts on the ``1`` cell; stepping on a hole fails at once;
success iff the walk ENDS on a goal cell (passing over the goal does not count). Moves that would leave the grid are
ignored (the agent stays put), as in Mirage; ``out_of_grid="fail"`` makes them fail instead.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.tasks import BadRecord, Task, json_object, validate_record
from latentcheck.bench.generic import check_exists, require, stream_tasks
from latentcheck.bench.scoring import accuracy, field

ACTIONS = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}
_LEVEL = re.compile(r"level\d+", re.IGNORECASE)


@dataclass(frozen=True)
class VSPOutcome:
    """Result of walking a path: ``success``, a short ``status``, the final ``position`` (row, col), moves parsed."""

    success: bool
    status: str
    position: tuple[int, int]
    n_moves: int


def parse_actions(path: str | None) -> list[str]:
    """Mirage ``parse_action_sequence``: upper-case, keep only U/D/R/L characters."""
    return [c for c in (path or "").upper() if c in ACTIONS]


def validate_map(map_desc: Any, where: str = "map", fieldname: str = "map_desc") -> list[list[int]]:
    """A rectangular int grid with values in {-1, 0, 1, 2}, exactly one start (1) and at least one goal (2)."""
    if isinstance(map_desc, str):
        try:
            map_desc = json.loads(map_desc)
        except json.JSONDecodeError:
            raise RecordError(where, fieldname, "not a 2-D list (or its JSON text)") from None
    if (not isinstance(map_desc, list) or not map_desc
            or not all(isinstance(row, list) and row for row in map_desc)):
        raise RecordError(where, fieldname, "must be a non-empty 2-D list of ints")
    width = len(map_desc[0])
    if any(len(row) != width for row in map_desc):
        raise RecordError(where, fieldname, "rows have different lengths")
    flat = [v for row in map_desc for v in row]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v in (-1, 0, 1, 2) for v in flat):
        raise RecordError(where, fieldname, "cells must be -1 (hole), 0 (safe), 1 (start) or 2 (goal)")
    if flat.count(1) != 1:
        raise RecordError(where, fieldname, f"needs exactly one start cell (1), found {flat.count(1)}")
    if flat.count(2) < 1:
        raise RecordError(where, fieldname, "needs a goal cell (2)")
    return map_desc


def simulate_vsp(map_desc: list[list[int]], path: str | None, out_of_grid: str = "ignore") -> VSPOutcome:
    """Walk ``path`` on ``map_desc``; see the module docstring for the rules."""
    if out_of_grid not in ("ignore", "fail"):
        raise LatentcheckError(f"out_of_grid must be 'ignore' or 'fail', got {out_of_grid!r}")
    grid = validate_map(map_desc)
    start = next((r, c) for r, row in enumerate(grid) for c, v in enumerate(row) if v == 1)
    actions = parse_actions(path)
    r, c = start
    for a in actions:
        dr, dc = ACTIONS[a]
        nr, nc = r + dr, c + dc
        if not (0 <= nr < len(grid) and 0 <= nc < len(grid[0])):
            if out_of_grid == "fail":
                return VSPOutcome(False, "left the grid", (r, c), len(actions))
            continue
        r, c = nr, nc
        if grid[r][c] == -1:
            return VSPOutcome(False, "fell in hole", (r, c), len(actions))
    if grid[r][c] == 2:
        return VSPOutcome(True, "reached goal", (r, c), len(actions))
    return VSPOutcome(False, "did not reach goal", (r, c), len(actions))


def _convert(line: str, where: str, base_dir: str, seen_ids: set[str]) -> Task:
    raw = json_object(line, where)
    text_input = require(raw, "text_input", where)
    image_input = require(raw, "image_input", where)
    map_desc = validate_map(raw.get("map_desc"), where)
    map_id = raw.get("map_id")
    rid = str(raw.get("id") or (map_id if map_id is not None else where.rsplit(":", 1)[-1]))
    if rid in seen_ids:  # the same map rendered twice: keep ids unique and stable (line number)
        rid = f"{rid}@{where.rsplit(':', 1)[-1]}"
    seen_ids.add(rid)
    level = _LEVEL.search(image_input)
    question = text_input.replace("<image>", "").strip()
    meta = {"text_input": text_input, "map_desc": map_desc, "map_id": map_id,
            "image_placeholder_offset": text_input.find("<image>")}
    return validate_record({"id": rid, "question": question or text_input, "image": image_input,
                            "category": level.group(0).lower() if level else None, "meta": meta},
                           where, base_dir=base_dir)


def find_image_root(jsonl: Path, max_up: int = 8) -> Path:
    """The first folder, from the jsonl's folder upwards, in which the first record's ``image_input`` exists (the
    jsonl's folder when none does: the missing images then become error records naming the path)."""
    folder = jsonl.resolve().parent
    first = None
    with open(jsonl, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict) and isinstance(obj.get("image_input"), str):
                    first = obj["image_input"]
                    break
    if first is None or os.path.isabs(first):
        return folder
    for cand in [folder, *folder.parents][:max_up + 1]:
        if (cand / first).is_file():
            return cand
    return folder


def load_vsp(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
             image_root: str | os.PathLike | None = None) -> Iterator[Task | BadRecord]:
    """Stream VSP tasks from ``test_direct.jsonl``; images relative to ``image_root`` (default: module docstring)."""
    p = check_exists(path)
    if p.is_dir():
        raise LatentcheckError(f"{p}: a folder; pass Mirage's test_direct.jsonl (with --image-root if its images "
                               "are not under a folder above it)")
    base_dir = str(Path(image_root).resolve() if image_root is not None else find_image_root(p))
    seen: set[str] = set()

    def rows():
        with open(p, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield f"{p.name}:{lineno}", line
    return stream_tasks(rows(), lambda line, where: _convert(line, where, base_dir, seen), str(p),
                        limit=limit, strict=strict)


def prompt_official(task: Task) -> str:
    """``text_input`` verbatim, ``<image>`` placeholder included (``build_prompt`` puts the image there or removes
    it, see the module docstring)."""
    return task.meta.get("text_input", task.question)


def vsp_is_correct(task: Task, pred: str | None) -> bool:
    return simulate_vsp(task.meta["map_desc"], pred).success


def score_vsp(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``accuracy`` = successes / n (``correct`` = simulated success); also per level (``category``)."""
    rs = list(results)
    out = accuracy(rs)
    out["successes"] = out.pop("correct")
    levels: dict[str, list[dict[str, Any]]] = {}
    for r in rs:
        lv = field(r, "category")
        if lv is not None:
            levels.setdefault(str(lv), []).append(r)
    out["per_level"] = {k: accuracy(v) for k, v in sorted(levels.items())}
    return out


__all__ = ["load_vsp", "find_image_root", "simulate_vsp", "parse_actions", "validate_map", "prompt_official",
           "vsp_is_correct",
           "score_vsp", "VSPOutcome"]
