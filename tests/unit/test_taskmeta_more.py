"""More TaskMetadata tests: the seed's getFullName/getName, name rules, per-step summaries,
the dict round trip and the method decorator (tests/unit/test_taskmeta.py has the basics)."""

import json
import time

import pytest

from diffstream.stream.provenance.taskmeta import TaskMetadata, time_method

pytestmark = pytest.mark.unit


def test_get_full_name_and_get_name_follow_the_running_step():
    meta = TaskMetadata("imageDifference")
    seen = []
    with meta.timer():
        seen.append((meta.get_full_name(), meta.get_name()))
        with meta.timer("warp"):
            seen.append((meta.get_full_name(), meta.get_name()))
            with meta.timer("grid"):
                seen.append((meta.get_full_name(), meta.get_name()))
        with meta.timer("zogy"):
            seen.append((meta.get_full_name(), meta.get_name()))
    assert seen == [
        ("imageDifference", "imageDifference"),
        ("imageDifference.warp", "warp"),
        ("imageDifference.warp.grid", "grid"),
        ("imageDifference.zogy", "zogy"),
    ]
    assert meta.get_full_name() == "imageDifference"  # back at the top after the steps


def test_full_metadata_keys_use_colons_between_levels_and_a_dot_before_the_item():
    meta = TaskMetadata("top")
    with meta.timer("sub"):
        with meta.timer("subsub"):
            meta.set("nStars", 12)
    full = meta.full_metadata()
    assert full["top:sub:subsub.nStars"] == 12
    for key in full:
        levels, item = key.rsplit(".", 1)
        assert "." not in levels and ":" not in item
        assert levels.split(":")[0] == "top"


def test_dotted_step_names_a_grandchild_directly():
    meta = TaskMetadata("top")
    with meta.timer("warp.grid"):
        assert meta.get_full_name() == "top.warp.grid"
    assert "top:warp:grid.wallTime" in meta.full_metadata()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: TaskMetadata(""), "task name must be a non-empty string"),
        (lambda: TaskMetadata("image.difference"), "task name must not contain '.'"),
        (lambda: TaskMetadata("a:b"), "task name must not contain ':'"),
    ],
)
def test_task_name_rules(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_item_names_may_not_hold_level_or_item_separators():
    meta = TaskMetadata()
    with pytest.raises(ValueError, match="item name must not contain '.'"):
        meta.set("psf.fwhm", 3.0)
    with pytest.raises(ValueError, match="item name must not contain ':'"):
        meta.set("psf:fwhm", 3.0)
    with pytest.raises(ValueError, match="item name must be a non-empty string"):
        meta.set("", 3.0)


def test_step_names_may_not_hold_a_colon():
    meta = TaskMetadata()
    with pytest.raises(ValueError, match="step name must not contain ':'"):
        with meta.timer("warp:grid"):
            pass
    with pytest.raises(ValueError, match="step name must be a non-empty string"):
        with meta.timer(""):
            pass
    assert meta.get_full_name() == "imageDifference"  # a refused step leaves the stack alone


def test_reentered_step_accumulates_time_and_counts_calls():
    meta = TaskMetadata("top")
    for _ in range(3):
        with meta.timer("tile"):
            time.sleep(0.002)
    items = meta.step("top.tile")
    assert items["nCalls"] == 3
    assert items["wallTime"] >= 0.006
    assert list(meta.timings()) == ["top.tile"]  # one step, not three


def test_start_and_end_items_are_ordered():
    meta = TaskMetadata("top")
    with meta.timer("work"):
        sum(range(200_000))  # some CPU
    items = meta.step("top.work")
    assert items["endCpuTime"] >= items["startCpuTime"]
    # Peak RSS never decreases during a process's life.
    assert items["endMaxResidentSetSize"] >= items["startMaxResidentSetSize"] > 0
    assert items["endUtc"] >= items["startUtc"]  # ISO 8601 in UTC sorts as time
    assert items["cpuTime"] >= 0.0


def test_step_summary_is_compact_and_json_ready():
    meta = TaskMetadata("imageDifference")
    with meta.timer():
        with meta.timer("warp"):
            pass
        meta.set("nDiaSources", 3)  # an item, not a timing: not in the summary
    summary = meta.step_summary()
    assert list(summary) == ["imageDifference", "imageDifference.warp"]
    assert set(summary["imageDifference.warp"]) == {
        "wallTime",
        "cpuTime",
        "maxResidentSetSizeMb",
        "nCalls",
    }
    assert summary["imageDifference"]["wallTime"] >= summary["imageDifference.warp"]["wallTime"]
    json.dumps(summary, allow_nan=False)


def test_step_lookup_names_the_known_steps():
    meta = TaskMetadata("top")
    with meta.timer("warp"):
        pass
    with pytest.raises(KeyError, match=r"no step named 'top.zogy'.*top\.warp"):
        meta.step("top.zogy")


def test_set_on_a_new_step_makes_it_visible():
    meta = TaskMetadata("top")
    meta.set("n", 1, step="top.later")
    assert meta.full_metadata() == {"top:later.n": 1}
    assert list(meta.steps()) == ["top", "top.later"]


def test_dict_round_trip_keeps_order_and_values():
    meta = TaskMetadata("top")
    with meta.timer("b"):
        meta.set("x", 1)
    with meta.timer("a"):
        pass
    data = json.loads(json.dumps(meta.to_dict()))
    back = TaskMetadata.from_dict(data)
    assert back.name == "top"
    assert back.full_metadata() == meta.full_metadata()
    assert list(back.timings()) == ["top.b", "top.a"]


def test_from_dict_refuses_bad_input():
    with pytest.raises(ValueError, match="needs 'name' and 'steps'"):
        TaskMetadata.from_dict({"steps": {}})
    with pytest.raises(ValueError, match="step 'other.warp' is not under task 'top'"):
        TaskMetadata.from_dict({"name": "top", "steps": {"other.warp": {}}})


class _Task:
    def __init__(self, metadata):
        self.metadata = metadata

    @time_method()
    def warp(self, x):
        return x + 1

    @time_method("zogy")
    def run_zogy(self):
        return self.metadata.get_full_name() if self.metadata else None


def test_time_method_times_under_self_metadata():
    meta = TaskMetadata("top")
    task = _Task(meta)
    assert task.warp(1) == 2
    assert task.run_zogy() == "top.zogy"
    assert list(meta.timings()) == ["top.warp", "top.zogy"]
    assert _Task.warp.__name__ == "warp"  # functools.wraps kept the name


def test_time_method_without_metadata_runs_untimed():
    task = _Task(None)
    assert task.warp(41) == 42
    assert task.run_zogy() is None
