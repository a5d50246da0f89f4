"""docs/scale.md's sizing (scripts/lstm_bench/scale.py) on the committed bench results:
the worker count follows the cores, and the streams held per worker only when measured."""

from __future__ import annotations

import copy
import json
import re
import sys
from typing import Any

from tests.harness import REPO

sys.path.insert(0, str(REPO / "scripts"))
from lstm_bench import scale

RESULTS = REPO / "docs" / "bench-results.json"


def _pods(text: str) -> int:
    match = re.search(r"\| pods \| [^|]+ \| \*\*([\d,]+) pods\*\* \|", text)
    assert match, text
    return int(match.group(1).replace(",", ""))


def _with_held(results: dict[str, Any], held: int) -> dict[str, Any]:
    changed = copy.deepcopy(results)
    changed["scaling"]["by_workers"]["1"]["streams_held"] = held
    return changed


def test_workers_follow_the_cores_when_no_redis_point_was_held() -> None:
    results = json.loads(RESULTS.read_text())
    none_held = scale.render(_with_held(results, 0))
    assert "H_1 < the lowest load point tried" in none_held and "gives no figure" in none_held
    cores = re.search(r"\| reference, cores \| [^|]+ \| \*\*([\d,]+) cores\*\* \|", none_held)
    assert cores
    assert _pods(none_held) == -(-int(cores.group(1).replace(",", "")) // scale.PLAN["workers_per_pod"])


def test_a_worker_holding_few_streams_raises_the_pod_count() -> None:
    results = json.loads(RESULTS.read_text())
    few, many = scale.render(_with_held(results, 8)), scale.render(_with_held(results, 100_000))
    assert "each holding H_1 | 1,000,000 / 8" in few
    assert _pods(few) == -(-int(1_000_000 / 8 * 1.5) // scale.PLAN["workers_per_pod"])
    assert _pods(many) == _pods(scale.render(_with_held(results, 0)))  # the cores decide
