"""A Hugging Face Hub of our own on 127.0.0.1, answering what huggingface_hub 0.16.4 asks for.

The endpoints (read from huggingface_hub 0.16.4's hf_api.py and file_download.py):
- GET /api/{models,datasets}/ID/revision/REV[?blobs=True]: the commit (`sha`) and `siblings` with
  size, git blob id and, for an LFS file, its sha256 and size (repo_info(files_metadata=True));
  an unknown revision is 404 with X-Error-Code: RevisionNotFound, a private repository without
  the token 401 with RepoNotFound, as hf_raise_for_status reads them;
- HEAD/GET /[datasets/]ID/resolve/REV/PATH: X-Repo-Commit and the ETag (the git blob id) for a
  plain file; for an LFS file a 302 to this server's /cdn/SHA256 with X-Linked-Etag (the sha256)
  and X-Linked-Size, as the Hub redirects to its CDN;
- GET /cdn/SHA256: the bytes, honouring `Range: bytes=N-` (206 and Content-Range), optionally
  throttled (a download to kill halfway) or tampered (other bytes than the listing's hash).
Every request is recorded (method, path, Range, Authorization) for the tests to read.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".msgpack", ".png", ".parquet", ".ckpt")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


@dataclass
class Repo:
    kind: str  # model or dataset
    repo: str
    commit: str
    files: dict[str, bytes]
    private: bool = False

    def lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    tampered: dict[str, bytes] = field(default_factory=dict)  # sha256 -> the bytes served instead
    rate: float | None = None  # bytes per second from /cdn (None: as fast as it goes)
    token: str = "hf_secret_token"
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def add(self, kind: str, repo: str, files: dict[str, bytes], private: bool = False) -> str:
        commit = hashlib.sha1(json.dumps(sorted((p, hashlib.sha256(d).hexdigest()) for p, d in files.items()))
                              .encode() + repo.encode()).hexdigest()
        self.repos[(kind, repo)] = Repo(kind, repo, commit, dict(files), private)
        return commit

    def tamper(self, data: bytes) -> None:
        """Serve `data` with one byte changed (same size) wherever its sha256 is asked for."""
        self.tampered[hashlib.sha256(data).hexdigest()] = data[:-1] + bytes([data[-1] ^ 0xFF])

    def ranges(self) -> list[str]:
        return [r.range for r in self.requests if r.range]

    def count(self, method: str, part: str = "") -> int:
        return sum(r.method == method and part in r.path for r in self.requests)

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

            def do_GET(self) -> None:
                hub._serve(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- routes ------------------------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append(Request(h.command, h.path, h.headers.get("Range"), h.headers.get("Authorization")))
        path = h.path.split("?", 1)[0]
        try:
            api = re.match(r"^/api/(models|datasets)/(.+)/revision/([^/]+)$", path)
            if api:
                return self._info(h, api.group(1)[:-1], api.group(2), api.group(3))
            resolve = re.match(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if resolve:
                kind = "dataset" if resolve.group(1) else "model"
                return self._resolve(h, kind, resolve.group(2), resolve.group(3), resolve.group(4), body)
            cdn = re.match(r"^/cdn/([0-9a-f]{64})$", path)
            if cdn:
                return self._cdn(h, cdn.group(1), body)
            self._reply(h, 404, {}, b"not found")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a killed fetch)

    def _find(self, h: BaseHTTPRequestHandler, kind: str, repo: str, rev: str) -> Repo | None:
        found = self.repos.get((kind, repo))
        if found is None or (found.private and h.headers.get("Authorization") != f"Bearer {self.token}"):
            self._reply(h, 401, {"X-Error-Code": "RepoNotFound"}, b'{"error": "Repository not found"}')
            return None
        if rev not in (found.commit, "main"):
            self._reply(h, 404, {"X-Error-Code": "RevisionNotFound"}, f'{{"error": "Invalid rev id: {rev}"}}'.encode())
            return None
        return found

    def _info(self, h: BaseHTTPRequestHandler, kind: str, repo: str, rev: str) -> None:
        found = self._find(h, kind, repo, rev)
        if found is None:
            return
        siblings = []
        for path, data in sorted(found.files.items()):
            item: dict = {"rfilename": path}
            if "blobs=True" in h.path:
                if found.lfs(path):
                    item.update(size=len(data), blobId=git_blob_id(lfs_pointer(data)),
                                lfs={"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                     "pointerSize": len(lfs_pointer(data))})
                else:
                    item.update(size=len(data), blobId=git_blob_id(data))
            siblings.append(item)
        doc = {"_id": "0" * 24, "id": repo, "sha": found.commit, "lastModified": "2023-08-31T00:00:00.000Z",
               "private": found.private, "siblings": siblings}
        if kind == "model":
            doc["modelId"] = repo
        self._reply(h, 200, {"Content-Type": "application/json"}, json.dumps(doc).encode())

    def _resolve(self, h: BaseHTTPRequestHandler, kind: str, repo: str, rev: str, path: str, body: bool) -> None:
        found = self._find(h, kind, repo, rev)
        if found is None:
            return
        if path not in found.files:
            self._reply(h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": found.commit}, b"")
            return
        data = found.files[path]
        common = {"X-Repo-Commit": found.commit}
        if found.lfs(path):
            digest = hashlib.sha256(data).hexdigest()
            self._reply(h, 302, {**common, "Location": f"{self.url}/cdn/{digest}", "X-Linked-Etag": f'"{digest}"',
                                 "X-Linked-Size": str(len(data)), "ETag": f'"{git_blob_id(lfs_pointer(data))}"'}, b"")
            return
        self._reply(h, 200, {**common, "ETag": f'"{git_blob_id(data)}"'}, data if body else None, len(data))

    def _cdn(self, h: BaseHTTPRequestHandler, digest: str, body: bool) -> None:
        data = next((d for r in self.repos.values() for d in r.files.values()
                     if hashlib.sha256(d).hexdigest() == digest), None)
        if data is None:
            self._reply(h, 404, {}, b"")
            return
        data = self.tampered.get(digest, data)
        start = 0
        wanted = re.match(r"bytes=(\d+)-$", h.headers.get("Range") or "")
        if wanted:
            start = int(wanted.group(1))
            if start >= len(data):
                self._reply(h, 416, {"Content-Range": f"bytes */{len(data)}"}, b"")
                return
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{digest}"', "Accept-Ranges": "bytes"}
        if wanted:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        h.send_response(206 if wanted else 200)
        for key, value in {**headers, "Content-Length": str(len(data) - start)}.items():
            h.send_header(key, value)
        h.end_headers()
        if not body:
            return
        chunk = 16384
        for pos in range(start, len(data), chunk):
            h.wfile.write(data[pos:pos + chunk])
            if self.rate:
                time.sleep(chunk / self.rate)

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, code: int, headers: dict[str, str], body: bytes | None,
               length: int | None = None) -> None:
        h.send_response(code)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(length if length is not None else len(body or b"")))
        h.end_headers()
        if body and h.command != "HEAD":
            h.wfile.write(body)


# -- repositories ------------------------------------------------------------------------------------
MODEL_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.20.0",
               "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
               "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"]}
SELECTED = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
            "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]


def other_formats(files: dict[str, bytes], seed: int = 1) -> dict[str, bytes]:
    """What a real SD repository carries beside fp32 safetensors, so that the lock has something to leave
    out: .bin, fp16 and non_ema variants, Flax, a README and .gitattributes. Their bytes are never fetched."""
    rnd = random.Random(seed)
    extra = {"README.md": b"# a tiny Stable Diffusion\n", ".gitattributes": b"*.safetensors filter=lfs diff=lfs\n"}
    for path in [p for p in files if p.endswith(".safetensors")]:
        stem = path[: -len(".safetensors")]
        extra[stem + ".bin"] = rnd.randbytes(len(files[path]))
        extra[stem + ".fp16.safetensors"] = rnd.randbytes(len(files[path]) // 2)
        if path.startswith("unet/"):
            extra[stem + ".non_ema.bin"] = rnd.randbytes(len(files[path]))
            extra[stem + ".msgpack"] = rnd.randbytes(len(files[path]))
    return {**files, **extra}


def synthetic_model(weight_bytes: int = 200_000, seed: int = 0) -> dict[str, bytes]:
    """A pipeline's file layout with random weights: enough for lock and fetch (no torch needed)."""
    rnd = random.Random(seed)
    files = {"model_index.json": json.dumps(MODEL_INDEX, indent=2).encode(),
             "scheduler/scheduler_config.json": b'{"_class_name": "DDPMScheduler"}\n',
             "tokenizer/merges.txt": b"#version: 0.2\nr e\n", "tokenizer/special_tokens_map.json": b"{}\n",
             "tokenizer/tokenizer_config.json": b"{}\n", "tokenizer/vocab.json": b'{"a": 0}\n'}
    for folder, name in (("text_encoder", "model"), ("unet", "diffusion_pytorch_model"),
                         ("vae", "diffusion_pytorch_model")):
        files[f"{folder}/config.json"] = json.dumps({"folder": folder}).encode()
        files[f"{folder}/{name}.safetensors"] = rnd.randbytes(weight_bytes)
    return other_formats(files)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# What a real repository carries beside fp32 safetensors, made from the real weights in the target (torch):
# .bin (torch.save), fp16 variants, and the UNet's non_ema .bin; the lock must leave all of them out.
OTHER_FORMATS = """
import sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
for path in sorted(Path(sys.argv[1]).rglob("*.safetensors")):
    tensors = load_file(str(path))
    stem = str(path)[: -len(".safetensors")]
    torch.save(tensors, stem + ".bin")
    save_file({k: v.half().contiguous() for k, v in tensors.items()}, stem + ".fp16.safetensors", {"format": "pt"})
    if path.parent.name == "unet":
        torch.save(tensors, stem + ".non_ema.bin")
"""


def stack_project(root: Path, repo: str, commit: str, dataset: tuple[str, str] | None = None) -> Path:
    """A copy of the default manifest (its lock, requirements and patches beside it, as in this repository)
    whose [model] is `repo` at `commit` (and a [dataset], when given); returns the manifest's path."""
    here = Path(__file__).resolve().parents[2]
    (root / "manifests").mkdir(parents=True)
    shutil.copytree(here / "patches", root / "patches")
    for name in ("sc7-sd14-lora.pypi.lock.txt", "requirements.in"):
        shutil.copyfile(here / "manifests" / name, root / "manifests" / name)
    text = (here / "manifests" / "sc7-sd14-lora.toml").read_text()
    start, end = text.index("[model]\n"), text.index("\n\n", text.index("[model]\n"))
    table = f'[model]\nrepo = "{repo}"\nrevision = "{commit}"\nweights = "safetensors"'
    if dataset:
        table += f'\n\n[dataset]\nrepo = "{dataset[0]}"\nrevision = "{dataset[1]}"'
    manifest = root / "manifests" / "sc7-sd14-lora.toml"
    manifest.write_text(text[:start] + table + text[end:])
    return manifest
