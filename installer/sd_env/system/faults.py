"""Named points where a test can kill sd-env with SIGKILL, to prove a kill -9 anywhere is recoverable.

`SD_ENV_TEST_KILL_AT=<point>` makes the process kill itself (no `finally`,
no atexit: exactly what kill -9 does) the first time it reaches that point;
`<point>#N` at the N-th time. `SD_ENV_TEST_PAUSE_AT=<point>:<seconds>` sleeps
there instead, so a test can start a second run while the first holds a step.
Unset, a point costs two environment lookups.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "SD_ENV_TEST_KILL_AT"
PAUSE = "SD_ENV_TEST_PAUSE_AT"

POINTS = {
    "locked": "the home's lock was just taken; nothing written yet",
    "lock-installed": "the era lock's packages were just installed, before any component",
    "fetched": "a component was cloned into scratch, before it moves into src/",
    "moved": "a checkout was just moved into src/, before the state records it",
    "half-patched": "the first patch of a series was written, the next not yet",
    "patched": "a series was written, before it is recorded",
    "built": "an editable install just finished, before it is confirmed",
    "atomic-write": "a temporary file is complete and fsynced, before it replaces the target",
    "state-saved": "state.json was just written",
    "repatch-fetched": "repatch fetched the new release, before the session is saved",
    "ported": "a patch was ported and committed in the work tree, before the session records it",
    "finishing": "the session just moved to the finishing phase",
    "patches-written": "the refreshed patch files replaced nothing yet / were just written",
    "manifest-written": "the manifest points at the refreshed patches",
    "swapped": "the work tree just became the managed checkout",
    "repatch-built": "the editable install of the new release just finished, the session still exists",
}

_hits: dict[str, int] = {}


def point(name: str) -> None:
    assert name in POINTS, name
    pause, _, seconds = os.environ.get(PAUSE, "").partition(":")
    if pause == name:
        time.sleep(float(seconds or 5))
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition("#")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
