"""Probe: download locked Hub files through the target's huggingface_hub, resumable.

    python hub_fetch.py --plan PLAN.json --result RESULT.json

PLAN: {"kind", "repo", "revision", "files": [{"path", "size", "etag", "incomplete"}]}. For each
file, the resolve endpoint's HEAD (get_hf_file_metadata: HF_ENDPOINT, the token, relative
redirects) must answer the locked commit (X-Repo-Commit) and the locked ETag (X-Linked-Etag for
an LFS file), else nothing is downloaded; then http_get appends to `incomplete` from where an
earlier, interrupted run stopped (a Range request), as huggingface_hub's own resume does, under
the same lock file. Hashing and placing are sd-env's (hubcache.py): this only writes bytes.
Progress lines go to stderr (this runs attached to the terminal); the result goes to RESULT:
{"ok", "done": [{path, resumed_from, bytes, seconds}]} or {"ok": false, "code", "error", "path"}.
"""

import argparse
import contextlib
import json
import os
import sys
import time

BIG = 8 << 20  # bytes: a file this big gets its own progress lines


class Progress:
    """The file http_get writes to: counts bytes and prints a progress line every 2 s."""

    def __init__(self, handle, path, start, total, show=True):
        self.handle, self.path, self.total, self.show = handle, path, total, show
        self.start = self.done = start
        self.began = self.last = time.monotonic()
        self.name = handle.name
        self.tty = sys.stderr.isatty()

    def write(self, data):
        self.handle.write(data)
        self.done += len(data)
        if self.show and time.monotonic() - self.last >= 2:
            self.last = time.monotonic()
            self.line()

    def tell(self):
        return self.handle.tell()

    def line(self, end=""):
        rate = (self.done - self.start) / max(time.monotonic() - self.began, 1e-6)
        text = (f"  {self.path}: {self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB "
                f"({100 * self.done / max(self.total, 1):.0f}%), {rate / 1e6:.1f} MB/s{end}")
        sys.stderr.write(("\r" + text + ("\n" if end else "")) if self.tty else text + "\n")
        sys.stderr.flush()


def main(plan):
    from filelock import FileLock
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.file_download import get_hf_file_metadata, http_get
    from huggingface_hub.utils import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        build_hf_headers,
        disable_progress_bars,
    )

    try:
        from huggingface_hub.utils import OfflineModeIsEnabled
    except ImportError:  # huggingface_hub 0.16 has it in file_download only
        from huggingface_hub.file_download import OfflineModeIsEnabled

    disable_progress_bars()
    done = []
    for item in plan["files"]:
        path, size, etag, partial = item["path"], item["size"], item["etag"], item["incomplete"]
        fail = {"ok": False, "path": path, "done": done, "endpoint": constants.ENDPOINT}
        url = hf_hub_url(plan["repo"], path, repo_type=plan["kind"], revision=plan["revision"])
        try:
            meta = get_hf_file_metadata(url)
        except RevisionNotFoundError:
            return {**fail, "code": "revision", "error": f"{constants.ENDPOINT} has no revision {plan['revision']} "
                    f"of {plan['repo']}"}
        except EntryNotFoundError:
            return {**fail, "code": "entry", "error": f"{constants.ENDPOINT} has no {path} at {plan['revision']}"}
        except RepositoryNotFoundError:
            return {**fail, "code": "repo", "error": f"{constants.ENDPOINT} has no repository {plan['repo']} (or it "
                    "is private and no token with access was given)"}
        except OfflineModeIsEnabled:
            return {**fail, "code": "offline", "error": "HF_HUB_OFFLINE is set: nothing can be fetched"}
        if meta.commit_hash != plan["revision"]:
            return {**fail, "code": "commit", "error": f"{url} answers for commit {meta.commit_hash}, the lock pins "
                    f"{plan['revision']}"}
        if meta.etag != etag:
            return {**fail, "code": "etag", "error": f"{url} is {meta.etag} (its ETag), the lock pins {etag}: the "
                    "server has another file under that name"}
        headers = build_hf_headers()
        if meta.location != url:
            headers.pop("authorization", None)  # as huggingface_hub does: no token to the CDN
        lock_path = partial[: -len(".incomplete")] + ".lock"
        with FileLock(lock_path):
            start = os.path.getsize(partial) if os.path.exists(partial) else 0
            if start > size:  # not a prefix of this file: start over
                os.remove(partial)
                start = 0
            began = time.monotonic()
            if start < size:
                big = size >= BIG  # small files (configs, tokenizer files) are summed up at the end, not shown
                if big or start:
                    sys.stderr.write(f"  {path}: {size / 1e6:.1f} MB"
                                     + (f", resuming at {start / 1e6:.1f} MB\n" if start else "\n"))
                with open(partial, "ab") as handle:
                    counted = Progress(handle, path, start, size, show=big)
                    http_get(meta.location, counted, resume_size=start, headers=headers, expected_size=size)
                    if big:
                        counted.line(end=" done")
        with contextlib.suppress(OSError):  # as huggingface_hub does after a download
            os.remove(lock_path)
        done.append({"path": path, "resumed_from": start, "bytes": size - start,
                     "seconds": round(time.monotonic() - began, 3)})
    fetched = sum(d["bytes"] for d in done)
    seconds = sum(d["seconds"] for d in done)
    sys.stderr.write(f"  fetched {len(done)} files, {fetched / 1e6:.1f} MB in {seconds:.1f} s\n")
    return {"ok": True, "done": done}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(sys.argv[1:])
    with open(args.plan, encoding="utf-8") as f:
        todo = json.load(f)
    try:
        result = main(todo)
    except Exception as exc:  # the network's errors: said in the result, the traceback on stderr
        import traceback

        traceback.print_exc()
        result = {"ok": False, "code": "error", "error": f"{type(exc).__name__}: {exc}"}
    with open(args.result, "w", encoding="utf-8") as f:
        json.dump(result, f)
    sys.exit(0 if result.get("ok") else 1)
