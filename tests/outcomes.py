"""Counting what a deployment did for one tenant, straight from MongoDB: the
jobs it holds, which finished and how, and the assistants made for them.

Fault tests compare these counts with what the client was told (its 202s):
nothing accepted may be lost, nothing may be made twice, nothing may hang.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from worker.store.connection import Store

OPEN = ("staged", "queued", "in_progress")


@dataclass
class Outcome:
    job_ids: set[str] = field(default_factory=set)
    custom_ids: dict[str, str | None] = field(default_factory=dict)
    # job id -> result code (None while it has none)
    codes: dict[str, int | None] = field(default_factory=dict)
    # job id -> the assistant id its 200 result names
    result_assistants: dict[str, str] = field(default_factory=dict)
    open_units: int = 0
    jobs_in_open_units: int = 0
    # job id -> every assistant stored for it (more than one is a duplicate)
    assistants_by_job: dict[str, list[str]] = field(default_factory=dict)
    assistants: int = 0

    @property
    def finished(self) -> int:
        return sum(1 for code in self.codes.values() if code is not None)

    @property
    def succeeded(self) -> set[str]:
        return {job for job, code in self.codes.items() if code == 200}

    @property
    def failed(self) -> set[str]:
        return {job for job, code in self.codes.items() if code is not None and code != 200}

    @property
    def duplicated(self) -> int:
        return sum(len(made) - 1 for made in self.assistants_by_job.values() if len(made) > 1)


def outcome(store: Store, tenant: str) -> Outcome:
    found = Outcome()
    for unit in store.jobs.find({"tenant": tenant}, {"items.body": 0}):
        if unit["status"] in OPEN:
            found.open_units += 1
            found.jobs_in_open_units += len(unit["items"])
        for index, item in enumerate(unit["items"]):
            code = unit["codes"][index]
            found.job_ids.add(item["id"])
            found.custom_ids[item["id"]] = item.get("custom_id")
            found.codes[item["id"]] = code
            if code == 200:
                found.result_assistants[item["id"]] = json.loads(unit["results"][index])["id"]
    for doc in store.assistants.find({"tenant": tenant}, {"job_id": 1, "id": 1}):
        found.assistants += 1
        found.assistants_by_job.setdefault(doc["job_id"], []).append(doc["id"])
    return found


def assert_each_accepted_job_done_once(
    store: Store, tenant: str, accepted: set[str], valid: set[str]
) -> Outcome:
    """Every accepted job finished, the valid ones with exactly one assistant,
    the one their result names; no other job and no other assistant exists."""
    found = outcome(store, tenant)
    assert accepted <= found.job_ids, f"lost: {len(accepted - found.job_ids)} accepted jobs"
    assert found.open_units == 0, f"stuck: {found.jobs_in_open_units} jobs in open units"
    assert found.finished == len(found.job_ids)
    assert found.succeeded == valid & found.job_ids
    assert found.failed == found.job_ids - valid
    assert found.duplicated == 0, f"duplicated: {found.duplicated} assistants"
    assert found.assistants == len(found.succeeded)
    assert set(found.assistants_by_job) == found.succeeded
    for job, assistant in found.result_assistants.items():
        assert found.assistants_by_job[job] == [assistant], job
    return found
