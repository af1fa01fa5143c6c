"""Helpers for tests that fork children and SIGKILL them."""
from __future__ import annotations


def private_tqdm_locks() -> None:
    """In a forked child, before any work: give tqdm write locks of the child's own.

    tqdm's default lock holds a process-shared semaphore (``multiprocessing.RLock``) that a forked child
    inherits. A child SIGKILLed while a progress bar holds it never releases it, and the parent's next
    progress bar then waits for ever (the full suite hung so, in a later test, once in many runs).
    """
    from tqdm import std

    std.TqdmDefaultWriteLock.th_lock = std.TRLock()   # a thread lock copied mid-acquire would deadlock too
    std.TqdmDefaultWriteLock.mp_lock = None           # no process-shared semaphore in this child
    own = std.TqdmDefaultWriteLock()
    classes = [std.tqdm]
    while classes:                                    # subclasses (tqdm.auto, transformers') may hold their own
        cls = classes.pop()
        classes += cls.__subclasses__()
        if "_lock" in vars(cls):
            cls._lock = own
    std.tqdm.set_lock(own)
