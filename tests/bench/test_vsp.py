"""VSP: path simulation on hand-drawn maps, loader, prompt snapshot, success-rate scoring."""

from __future__ import annotations

import json

import pytest

from latentcheck.bench import get_benchmark
from latentcheck.bench.vsp import load_vsp, parse_actions, simulate_vsp
from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.tasks import BadRecord, Task

# row 0: S . H        start (0,0), goal (2,2), holes (0,2) and (2,0)
# row 1: . . .
# row 2: H . G
MAP = [[1, 0, -1], [0, 0, 0], [-1, 0, 2]]
TEXT = ("<image>\nYou are given a map of a frozen lake. Find a path from the start to the goal without falling into a "
        "hole. Write the moves (U, D, L, R) in \\boxed{}.")


@pytest.mark.parametrize("path, success, status, pos", [
    ("R,D,R,D", True, "reached goal", (2, 2)),
    ("D R D R", True, "reached goal", (2, 2)),
    ("Right, Down, Right, Down", True, "reached goal", (2, 2)),  # only U/D/L/R characters count
    ("R,R", False, "fell in hole", (0, 2)),
    ("D,D,R,R", False, "fell in hole", (2, 0)),                   # fails at the hole, later moves irrelevant
    ("U,L,R,D,R,D", True, "reached goal", (2, 2)),                 # U and L leave the grid: ignored (Mirage)
    ("R,D,R,D,U", False, "did not reach goal", (1, 2)),           # passed over the goal, did not end there
    ("", False, "did not reach goal", (0, 0)),
    (None, False, "did not reach goal", (0, 0)),
])
def test_simulation(path, success, status, pos):
    out = simulate_vsp(MAP, path)
    assert (out.success, out.status, out.position) == (success, status, pos)


def test_out_of_grid_fail_mode():
    out = simulate_vsp(MAP, "U,L,R,D,R,D", out_of_grid="fail")
    assert (out.success, out.status, out.position) == (False, "left the grid", (0, 0))
    with pytest.raises(LatentcheckError):
        simulate_vsp(MAP, "R", out_of_grid="wrap")


def test_parse_actions_matches_mirage():
    assert parse_actions("up, LEFT and down") == ["U", "L", "D", "D"]  # 'and' contributes a D, as in Mirage


@pytest.mark.parametrize("bad_map, msg", [
    ([[0, 0], [0, 2]], "start"), ([[1, 0], [0, 0]], "goal"), ([[1, 0], [0]], "lengths"), ([[1, 3], [0, 2]], "cells"),
    ("not json", "2-D list")])
def test_map_validation(bad_map, msg):
    with pytest.raises(RecordError, match=msg):
        simulate_vsp(bad_map, "R")


@pytest.fixture
def vsp_file(tmp_path, image_bytes):
    img_dir = tmp_path / "imgs_test" / "level3" / "img"
    img_dir.mkdir(parents=True)
    (img_dir / "0.png").write_bytes(image_bytes((200, 200, 255), (30, 30)))
    lines = [
        {"text_input": TEXT, "image_input": "imgs_test/level3/img/0.png", "map_id": 0, "map_desc": MAP},
        {"text_input": TEXT, "image_input": "imgs_test/level3/img/0.png", "map_id": 1,
         "map_desc": [[1, 1], [0, 2]]},
        {"text_input": TEXT, "image_input": "imgs_test/level3/img/0.png", "map_id": 0, "map_desc": json.dumps(MAP)},
    ]
    path = tmp_path / "test_direct.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_loader(vsp_file):
    out = list(load_vsp(vsp_file))
    t0, bad, t2 = out
    assert isinstance(t0, Task) and t0.id == "0" and t0.category == "level3" and t0.options is None
    assert t0.meta["map_desc"] == MAP and t0.meta["image_placeholder_offset"] == 0
    assert t0.load_image().size == (30, 30)
    assert isinstance(bad, BadRecord) and (bad.where, bad.error.field) == ("test_direct.jsonl:2", "map_desc")
    assert t2.id == "0@3" and t2.meta["map_desc"] == MAP  # repeated map id kept unique; JSON-text map parsed


def test_prompt_snapshot_and_scoring(vsp_file, snapshot):
    bench = get_benchmark("vsp")
    t0, _, t2 = bench.load(vsp_file)
    assert bench.prompt(t0) == t0.meta["text_input"]  # verbatim: build_prompt places or removes <image>
    assert bench.prompt(t0).replace("<image>", "") == snapshot("vsp_official.txt")
    recs = [bench.record(t0, "I go right then down. \\boxed{R, D, R, D}"),
            bench.record(t2, "\\boxed{R, R}"),
            bench.record(t0, "R, D, R, D without a box")]
    assert [(r["pred"], r["correct"]) for r in recs] == [("R, D, R, D", True), ("R, R", False), (None, False)]
    s = bench.score(recs)
    assert (s["n"], s["successes"]) == (3, 1) and s["accuracy"] == pytest.approx(1 / 3)
    assert s["per_level"]["level3"]["accuracy"] == pytest.approx(1 / 3)
