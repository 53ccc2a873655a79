"""Probe: a Hub repository's files at one revision, asked through the target's huggingface_hub.

    python hub_lock.py --kind model|dataset --repo ID --revision COMMIT --scratch DIR

One API call gives the revision's commit and its file listing with each LFS file's size and
sha256 (`repo_info(..., files_metadata=True)`: GET /api/{models,datasets}/ID/revision/REV?blobs=True,
at HF_ENDPOINT as huggingface_hub reads it, with the token it finds: HUGGING_FACE_HUB_TOKEN or
the token file). A file not in LFS (configs, tokenizer files, a few KB) has only a git blob id
there: it is downloaded into DIR (hf_hub_download: the resolve endpoint) and hashed, and its
git blob id must be the listing's. Prints one JSON object: {"ok", "commit", "endpoint",
"files": [{path, size, sha256, etag, lfs}], "model_index"}; a failure is {"ok": false, "code",
"error"} with code "revision", "repo", "offline", "listing" or "blob".
"""

import argparse
import hashlib
import json
import sys

from _result import report


def lfs_of(sibling):
    lfs = getattr(sibling, "lfs", None)
    if lfs is None:
        return None
    get = lfs.get if isinstance(lfs, dict) else (lambda key: getattr(lfs, key, None))
    return {"sha256": get("sha256"), "size": get("size")}


def main(args):
    import huggingface_hub
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.utils import (
        RepositoryNotFoundError,
        RevisionNotFoundError,
        disable_progress_bars,
    )

    try:
        from huggingface_hub.utils import OfflineModeIsEnabled
    except ImportError:  # huggingface_hub 0.16 has it in file_download only
        from huggingface_hub.file_download import OfflineModeIsEnabled

    disable_progress_bars()
    endpoint = constants.ENDPOINT
    said = {"endpoint": endpoint, "huggingface_hub": huggingface_hub.__version__}
    try:
        info = HfApi().repo_info(args.repo, revision=args.revision, repo_type=args.kind, files_metadata=True)
    except RevisionNotFoundError:
        return {"ok": False, "code": "revision", **said,
                "error": f"{endpoint} has no revision {args.revision} of the {args.kind} {args.repo}"}
    except RepositoryNotFoundError:
        return {"ok": False, "code": "repo", **said,
                "error": f"{endpoint} has no {args.kind} repository {args.repo} (or it is private or gated and "
                         "no token with access was given)"}
    except OfflineModeIsEnabled:
        return {"ok": False, "code": "offline", **said, "error": "HF_HUB_OFFLINE is set: the Hub cannot be asked"}
    files, model_index = [], None
    for sibling in info.siblings:
        path, size, blob_id, lfs = sibling.rfilename, sibling.size, getattr(sibling, "blob_id", None), lfs_of(sibling)
        if lfs is not None:
            if not lfs["sha256"] or lfs["size"] is None:
                return {"ok": False, "code": "listing", **said, "error": f"the listing gives {path} no LFS sha256"}
            files.append({"path": path, "size": lfs["size"], "sha256": lfs["sha256"], "etag": lfs["sha256"],
                          "lfs": True})
            continue
        if not blob_id or size is None:
            return {"ok": False, "code": "listing", **said,
                    "error": f"the listing gives {path} no size or blob id (not a Hub API with blobs=True?)"}
        local = hf_hub_download(args.repo, path, repo_type=args.kind, revision=info.sha, cache_dir=args.scratch)
        with open(local, "rb") as handle:
            data = handle.read()
        git_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if git_id != blob_id or len(data) != size:
            return {"ok": False, "code": "blob", **said,
                    "error": f"{path} as served ({len(data)} bytes, git blob {git_id}) is not the file the listing "
                             f"names ({size} bytes, git blob {blob_id})"}
        files.append({"path": path, "size": size, "sha256": hashlib.sha256(data).hexdigest(), "etag": blob_id,
                      "lfs": False})
        if path == "model_index.json":
            model_index = json.loads(data.decode("utf-8"))
    return {"ok": True, "commit": info.sha, "files": files, "model_index": model_index, **said}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("model", "dataset"), required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--revision", required=True)
    parser.add_argument("--scratch", required=True)
    report(main, parser.parse_args(sys.argv[1:]))
