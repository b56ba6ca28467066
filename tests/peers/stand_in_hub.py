#!/usr/bin/env python3
"""A stand-in for the Hugging Face hub on 127.0.0.1, for tests and benchmarks (no network).

Serves the repositories under ROOT the way huggingface.co does for the calls `huggingface_hub`
and `mlxk pull` make:

  GET  /api/models/{org}/{name}/revision/{rev}         repo info: id, sha, siblings
  GET  /api/models/{org}/{name}/tree/{rev}?recursive=1 the file tree (paginated with a Link header)
  HEAD|GET /{org}/{name}/resolve/{rev}/{path}           a small file (ETag = git blob sha1), or a 302
                                                        to /cdn/{sha256} for an LFS file, with
                                                        X-Linked-Etag / X-Linked-Size / X-Repo-Commit
  GET  /cdn/{sha256}                                    the LFS content (Range, 206), on a second
                                                        port: another origin, as the hub's CDN is
  GET  /_control/stats, POST /_control                  what was served; fault injection

ROOT layout (the tests write it):
  ROOT/{org}/{name}/commits/{sha}/...   the files of each commit
  ROOT/{org}/{name}/refs/{branch|tag}   the commit sha a ref names
  ROOT/{org}/{name}/gated               present: requests need `Authorization: Bearer TOKEN`

Files ending in .safetensors, .gguf, .bin, .pt or larger than 10 MB are LFS files, as
.gitattributes makes them on the hub. Errors carry the hub's X-Error-Code (RepoNotFound,
RevisionNotFound, EntryNotFound, GatedRepo).

Faults: POST /_control with {"cut_after": N, "match": "substring", "count": K} makes the next K
GETs whose path contains `match` close the connection after N body bytes; {"rate": B} sends
file bodies at B bytes per second (null: full speed); {"clear_faults": true} ends the faults. Stats:
{"bytes": {path: bytes sent}, "requests": [[method, path, range or null, status]],
 "cdn_authorization": number of CDN requests that carried an Authorization header}.

Usage: stand_in_hub.py ROOT [--token TOKEN] [--page-size N] [--lifetime SECONDS]
Prints "PORT <port>" once listening; stops by itself after --lifetime (default 900) seconds.
"""

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")
LFS_MIN_SIZE = 10 * 1024 * 1024
SHA40 = re.compile(r"^[0-9a-f]{40}$")


class Hub:
    def __init__(self, root, token, page_size):
        self.root = Path(root)
        self.token = token
        self.page_size = page_size
        self.lock = threading.Lock()
        self.bytes = {}
        self.requests = []
        self.cdn_authorization = 0
        self.faults = []  # [{"cut_after", "match", "count"}]
        self.cdn_port = 0
        self.rate = None  # bytes per second for file bodies, when throttled
        self.digests = {}  # (path, mtime, size) -> (sha1 git, sha256)
        self.cdn = {}  # sha256 -> Path

    def repo_dir(self, org, name):
        d = self.root / org / name
        return d if (d / "commits").is_dir() else None

    def resolve(self, repo, rev):
        rev = urllib.parse.unquote(rev)
        if SHA40.match(rev) and (repo / "commits" / rev).is_dir():
            return rev
        ref = repo / "refs" / rev
        if ref.is_file():
            return ref.read_text().strip()
        return None

    def digest(self, path):
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self.lock:
            if key in self.digests:
                return self.digests[key]
        sha1 = hashlib.sha1(b"blob %d\0" % st.st_size)
        sha256 = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha1.update(chunk)
                sha256.update(chunk)
        value = (sha1.hexdigest(), sha256.hexdigest())
        with self.lock:
            self.digests[key] = value
            self.cdn[value[1]] = path
        return value

    @staticmethod
    def is_lfs(path):
        return path.name.endswith(LFS_SUFFIXES) or path.stat().st_size > LFS_MIN_SIZE

    def files(self, commit_dir):
        out = []
        for p in sorted(commit_dir.rglob("*")):
            if p.is_file():
                out.append(p.relative_to(commit_dir).as_posix())
        return out

    def take_fault(self, path):
        with self.lock:
            for f in self.faults:
                if f["match"] in path and f["count"] > 0:
                    f["count"] -= 1
                    return f["cut_after"]
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: Hub = None  # set by main

    def log_message(self, *args):
        pass

    # -- helpers ------------------------------------------------------------------------
    def send_json(self, status, obj, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.record(status)

    def error(self, status, code, message):
        self.send_json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def record(self, status):
        if self.path.startswith("/_control"):
            return
        with self.hub.lock:
            self.hub.requests.append([self.command, self.path, self.headers.get("Range"), status])

    def authorized(self, repo):
        if not (repo / "gated").exists():
            return True
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def send_file(self, path, extra_headers):
        size = path.stat().st_size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = re.match(r"bytes=(\d+)-(\d*)$", rng.strip())
            if m:
                start = int(m.group(1))
                if m.group(2):
                    end = min(int(m.group(2)), size - 1)
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    self.record(416)
                    return
                status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        for k, v in extra_headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.record(status)
        if self.command == "HEAD":
            return
        cut = self.hub.take_fault(self.path)
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining > 0:
                rate = self.hub.rate
                chunk = f.read(min(64 << 10 if rate else 1 << 20, remaining))
                if rate:
                    time.sleep(len(chunk) / rate)
                if not chunk:
                    break
                if cut is not None and sent + len(chunk) > cut:
                    chunk = chunk[: max(cut - sent, 0)]
                    self.wfile.write(chunk)
                    self.count(path, len(chunk))
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                # Counted as sent, chunk by chunk, so that a reset of the stats is exact.
                self.count(path, len(chunk))
                sent += len(chunk)
                remaining -= len(chunk)

    def count(self, path, n):
        with self.hub.lock:
            key = self.path.split("?")[0]
            self.hub.bytes[key] = self.hub.bytes.get(key, 0) + n

    # -- routes -------------------------------------------------------------------------
    def do_HEAD(self):
        self.route()

    def do_GET(self):
        self.route()

    def do_POST(self):
        if self.path.startswith("/_control"):
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}")
            with self.hub.lock:
                if "cut_after" in body:
                    self.hub.faults.append(
                        {"cut_after": body["cut_after"], "match": body.get("match", ""), "count": body.get("count", 1)}
                    )
                if body.get("clear_faults"):
                    self.hub.faults = []
                if "rate" in body:
                    self.hub.rate = body["rate"]
                if body.get("reset_stats"):
                    self.hub.bytes, self.hub.requests, self.hub.cdn_authorization = {}, [], 0
            self.send_json(200, {"ok": True})
            return
        self.error(404, "NotFound", "no such route")

    def route(self):
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/")[1:]]
        query = urllib.parse.parse_qs(url.query)
        if parts[:2] == ["_control", "stats"]:
            with self.hub.lock:
                stats = {"bytes": self.hub.bytes, "requests": self.hub.requests,
                         "cdn_authorization": self.hub.cdn_authorization}
                self.send_json(200, stats)
            return
        if parts[:1] == ["cdn"] and len(parts) == 2:
            if self.headers.get("Authorization"):
                with self.hub.lock:
                    self.hub.cdn_authorization += 1
            path = self.hub.cdn.get(parts[1])
            if path is None:
                self.error(404, "EntryNotFound", "no such object")
                return
            self.send_file(path, {"ETag": f'"{parts[1]}"', "Content-Type": "application/octet-stream"})
            return
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            org, name, kind, rev = parts[2], parts[3], parts[4], parts[5]
            found = self.repo_at(org, name, rev)
            if found is None:
                return
            repo, sha = found
            commit = repo / "commits" / sha
            if kind == "revision":
                self.send_json(200, {
                    "id": f"{org}/{name}", "modelId": f"{org}/{name}", "sha": sha, "private": False,
                    "gated": "auto" if (repo / "gated").exists() else False, "disabled": False,
                    "siblings": [{"rfilename": f} for f in self.hub.files(commit)], "tags": [],
                    "lastModified": "2026-01-01T00:00:00.000Z",
                })
                return
            if kind == "tree":
                self.tree(org, name, sha, commit, "/".join(parts[6:]), query)
                return
        if len(parts) >= 5 and parts[2] == "resolve":
            org, name, rev = parts[0], parts[1], parts[3]
            rel = "/".join(parts[4:])
            found = self.repo_at(org, name, rev)
            if found is None:
                return
            repo, sha = found
            path = repo / "commits" / sha / rel
            if not path.is_file():
                self.error(404, "EntryNotFound", f"{rel} does not exist at {sha}")
                return
            sha1, sha256 = self.hub.digest(path)
            common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
            if self.hub.is_lfs(path):
                # The CDN is another origin (its own port), as on the hub: clients do not send
                # the token there, and huggingface_hub does not follow the redirect on HEAD.
                location = f"http://127.0.0.1:{self.hub.cdn_port}/cdn/{sha256}?expires=never"
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("ETag", f'"{sha1}"')
                self.send_header("X-Linked-Etag", f'"{sha256}"')
                self.send_header("X-Linked-Size", str(path.stat().st_size))
                self.send_header("X-Repo-Commit", sha)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.record(302)
                return
            self.send_file(path, {**common, "ETag": f'"{sha1}"', "Content-Type": "application/octet-stream"})
            return
        self.error(404, "NotFound", f"no such route: {url.path}")

    def repo_at(self, org, name, rev):
        """(repo dir, commit sha) of org/name at rev, or None once the hub's error is sent."""
        repo = self.hub.repo_dir(org, name)
        if repo is None:
            self.error(404, "RepoNotFound", f"Repository {org}/{name} not found")
            return None
        if not self.authorized(repo):
            self.error(401, "GatedRepo", f"Access to model {org}/{name} is restricted")
            return None
        sha = self.hub.resolve(repo, rev)
        if sha is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, sha

    def tree(self, org, name, sha, commit, sub, query):
        base = commit / sub if sub else commit
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = []
        items = sorted(base.rglob("*")) if recursive else sorted(base.iterdir())
        for p in items:
            rel = p.relative_to(commit).as_posix()
            if p.is_dir():
                entries.append({"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(),
                                "size": 0, "path": rel})
                continue
            sha1, sha256 = self.hub.digest(p)
            e = {"type": "file", "oid": sha1, "size": p.stat().st_size, "path": rel}
            if self.hub.is_lfs(p):
                e["lfs"] = {"oid": sha256, "size": p.stat().st_size, "pointerSize": 134}
            entries.append(e)
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + self.hub.page_size]
        headers = {}
        if start + self.hub.page_size < len(entries):
            q = dict((k, v[0]) for k, v in query.items())
            q["cursor"] = str(start + self.hub.page_size)
            host = self.headers.get("Host", "127.0.0.1")
            path = urllib.parse.quote(f"/api/models/{org}/{name}/tree/{sha}" + (f"/{sub}" if sub else ""))
            headers["Link"] = f'<http://{host}{path}?{urllib.parse.urlencode(q)}>; rel="next"'
        self.send_json(200, page, headers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--token", default="hf_stand_in_token")
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--lifetime", type=float, default=900)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    Handler.hub = Hub(args.root, args.token, args.page_size)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    cdn = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    cdn.daemon_threads = True
    Handler.hub.cdn_port = cdn.server_address[1]
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    print(f"PORT {server.server_address[1]}", flush=True)
    threading.Thread(target=lambda: (time.sleep(args.lifetime), os._exit(0)), daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
