"""SIGKILL during ``save`` and during load-add-save (issue #12): 50 kill points, each must leave a loadable
index at the path -- the old one or the new one, never a mix or nothing -- and no leftovers once the next
load or save has run.

Each save runs in a forked child (the parent keeps the built indexes, so a fork costs milliseconds). Kill
points are of two kinds: *at a step* -- the child kills itself just before its N-th file-system call
(mkdir, rename, replace, unlink, rmdir, fsync), enumerating every step of the swap, always including the
one exactly between the two renames -- and *at a time*: the parent kills the child after a random delay
within a save's duration. ``RETRIEVEKIT_KILL_SEED`` changes the (otherwise fixed) random choices.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.forking import private_tqdm_locks
from retrieval import Retriever

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork and SIGKILL")

N_DOCS = 1500
STEPS = ("mkdir", "rename", "replace", "unlink", "rmdir", "fsync")
POINTS_PER_MODE = 25            # x 2 modes = 50 kill points
SEED = int(os.environ.get("RETRIEVEKIT_KILL_SEED", "12"))


def corpus(prefix: str, n: int) -> list[dict[str, str]]:
    words = "cat dog gene mouse human cell protein risk trial therapy".split()
    return [{"_id": f"{prefix}{i}",
             "text": " ".join(words[(i * k) % len(words)] for k in range(1, 9)) + f" {prefix}w{i}"} for i in range(n)]


OLD, EXTRA = corpus("o", N_DOCS), corpus("x", 40)


def count_steps(log: list[str], kill_at: int | None) -> None:
    """In the child: log every file-system step; SIGKILL ourselves just before step ``kill_at`` (1-based)."""
    for name in STEPS:
        real = getattr(os, name)

        def step(*args, _real=real, _name=name, **kwargs):
            log.append(_name)
            if kill_at is not None and len(log) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*args, **kwargs)

        setattr(os, name, step)


def run_child(work: Callable[[], None], kill_at: int | None = None, delay: float | None = None,
              report: Path | None = None) -> int:
    """Fork; the child runs ``work`` (killed at a step or after ``delay`` s). Returns the child's wait status."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            private_tqdm_locks()   # a kill inside a progress bar must not leave the parent's tqdm lock held
            log: list[str] = []
            count_steps(log, kill_at)
            work()
            if report is not None:
                report.write_text(json.dumps(log))
            code = 0
        finally:
            os._exit(code)
    if delay is not None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


TQDM_CHILD = """
import os, signal, sys
from tqdm import tqdm
sys.path.insert(0, {tests!r})
from helpers.forking import private_tqdm_locks
list(tqdm(range(3), file=open(os.devnull, "w")))    # the parent has made its lock before forking
pid = os.fork()
if pid == 0:
    if {private!r}:
        private_tqdm_locks()
    tqdm.get_lock().acquire()                         # killed while a progress bar holds the lock
    os.kill(os.getpid(), signal.SIGKILL)
os.waitpid(pid, 0)
list(tqdm(range(3), file=open(os.devnull, "w")))
print("parent not blocked")
"""


@pytest.mark.parametrize("private", [True, False])
def test_a_child_killed_inside_a_progress_bar_leaves_the_parent_free(private: bool) -> None:
    """Why run_child gives each child tqdm locks of its own: without them the parent's next bar hangs for ever."""
    import subprocess

    code = TQDM_CHILD.format(tests=str(Path(__file__).resolve().parent.parent), private=private)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60 if private else 10)
    except subprocess.TimeoutExpired:
        assert not private, "the parent hung although the child had private tqdm locks"
        return
    assert private, "the shared-lock hang no longer happens: private_tqdm_locks may no longer be needed"
    assert done.returncode == 0 and "parent not blocked" in done.stdout, done.stderr[-2000:]


def report(mode: str, steps: list[str], at_steps: list[int], n_delays: int, outcomes: dict[str, int]) -> None:
    """Append what was tried to $RETRIEVEKIT_ROBUSTNESS_REPORT (JSON lines), for the results table."""
    if os.environ.get("RETRIEVEKIT_ROBUSTNESS_REPORT"):
        with open(os.environ["RETRIEVEKIT_ROBUSTNESS_REPORT"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"test": "kill_save", "mode": mode, "n_steps": len(steps),
                                 "killed_before": [steps[i - 1] + f"#{i}" for i in at_steps],
                                 "time_kills": n_delays, "outcomes": outcomes}) + "\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("kill")
    old = Retriever.from_documents(OLD, show_progress=False)
    old.save(base / "pristine" / "idx")
    new = Retriever.from_documents(OLD[:N_DOCS // 2] + EXTRA, show_progress=False)
    return {"base": base, "new": new, "old_ids": [d["_id"] for d in OLD],
            "new_ids": [d["_id"] for d in OLD[:N_DOCS // 2] + EXTRA], "added_ids": [d["_id"] for d in OLD + EXTRA]}


def fresh(built: dict, name: str) -> Path:
    folder = built["base"] / name
    shutil.copytree(built["base"] / "pristine", folder)
    return folder / "idx"


def work_for(mode: str, built: dict, idx: Path) -> Callable[[], None]:
    if mode == "save":
        return lambda: built["new"].save(idx)

    def add_then_save() -> None:
        r = Retriever.load(idx)
        r.add(EXTRA)
        r.save(idx)
    return add_then_save


def check_after_kill(mode: str, built: dict, idx: Path) -> str:
    """The path holds the old or the new index, loads, searches right; no leftovers after load and save."""
    loaded = Retriever.load(idx)
    new_ids = built["new_ids"] if mode == "save" else built["added_ids"]
    state = "old" if loaded.docs.ids == built["old_ids"] else "new" if loaded.docs.ids == new_ids else "mixed"
    assert state != "mixed", f"{idx}: {len(loaded)} docs, neither the old nor the new index"
    assert [h.id for h in loaded.retrieve("ow7 cat", k=1)] == ["o7"]
    assert sorted(os.listdir(idx.parent)) == ["idx"], os.listdir(idx.parent)     # load cleaned up
    loaded.save(idx)                                                               # the next save
    assert sorted(os.listdir(idx.parent)) == ["idx"], os.listdir(idx.parent)
    assert Retriever.load(idx).docs.ids == loaded.docs.ids
    return state


@pytest.mark.parametrize("mode", ["save", "add"])
def test_kill_anywhere_leaves_the_old_or_the_new_index(built: dict, mode: str) -> None:
    rng = random.Random(f"{SEED}-{mode}")
    dry = fresh(built, f"{mode}-dry")
    start = time.perf_counter()
    assert run_child(work_for(mode, built, dry), report=dry.parent / "steps.json") == 0
    duration = time.perf_counter() - start
    steps = json.loads((dry.parent / "steps.json").read_text())
    renames = [i + 1 for i, s in enumerate(steps) if s == "rename"]
    between = renames[-1]                   # just before the second rename of the swap: the old one is aside
    assert len(renames) >= 2 and steps[renames[-2] - 1] == "rename"
    journal = steps.index("replace") + 1                       # the journal's rename into place
    unlink = steps.index("unlink", between) + 1                 # the journal's removal after the swap
    at_steps = set(range(journal - 1, unlink + 2))              # every step of the swap, then random others
    others = [i for i in range(1, len(steps) + 1) if i not in at_steps]
    at_steps = sorted(at_steps | set(rng.sample(others, min(len(others), POINTS_PER_MODE // 2 - len(at_steps)))))
    delays = [rng.uniform(0, duration) for _ in range(POINTS_PER_MODE - len(at_steps))]
    outcomes = {"old": 0, "new": 0}
    for i, kill_at in enumerate(at_steps):
        idx = fresh(built, f"{mode}-step-{i}")
        status = run_child(work_for(mode, built, idx), kill_at=kill_at)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (kill_at, steps[kill_at - 1])
        if kill_at == between:
            assert not idx.exists()                       # the window: the old index aside, the new not yet in
        state = check_after_kill(mode, built, idx)
        outcomes[state] += 1
        if kill_at == between:
            assert state == "new"                         # the next load finished the swap forward
    for i, delay in enumerate(delays):
        idx = fresh(built, f"{mode}-time-{i}")
        run_child(work_for(mode, built, idx), delay=delay)
        outcomes[check_after_kill(mode, built, idx)] += 1
    assert sum(outcomes.values()) == POINTS_PER_MODE
    report(mode, steps, at_steps, len(delays), outcomes)
    assert outcomes["old"] and outcomes["new"], outcomes   # the kill points span the whole save
