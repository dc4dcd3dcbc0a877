"""An in-memory stand-in for the Hugging Face Hub API on 127.0.0.1, for offline push tests.

It serves the requests ``huggingface_hub``'s ``HfApi.create_repo``, ``create_branch`` and ``create_commit``
make (read from the installed client: ``hf_api.py`` and ``_commit_api.py``):

- ``POST /api/repos/create``: JSON ``{"name", "organization", "type"?, "visibility"?}`` -> ``{"url"}``; 409 if it exists
- ``POST /api/validate-yaml``: JSON ``{"content", "repoType"}`` -> ``{"errors": [], "warnings": []}``
- ``POST /api/{type}s/{repo_id}/branch/{branch}`` -> ``{}``; 409 if it exists
- ``POST /api/{type}s/{repo_id}/preupload/{revision}``: JSON ``{"files": [{"path", "sample", "size"}]}``
  -> ``{"files": [{"path", "uploadMode", "shouldIgnore", "oid"}]}``
- ``POST /api/{type}s/{repo_id}/commit/{revision}``: NDJSON, a ``header`` line then one ``file`` line per file
  (base64 content) -> ``{"commitUrl", "commitOid", "pullRequestUrl"}``
- ``GET /api/agent-harnesses`` (fetched from ``constants.ENDPOINT`` when request headers are built)

Every file is declared ``regular`` in preupload, so contents travel inside the commit body and no LFS/Xet
endpoint is needed (keep test files small; an ``lfsFile`` line is refused). Remote oids are never
reported, so every file is sent again on each commit. ``fail_commit`` injects a failure on the commit
endpoint: an HTTP status (answered without applying anything) or ``"disconnect"`` (connection dropped).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
DISCONNECT = "disconnect"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Commit:
    repo_type: str
    repo_id: str
    revision: str
    summary: str
    description: str
    create_pr: bool
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Repo:
    visibility: str | None
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})


Answer = tuple[int, dict[str, Any], dict[str, str]] | None  # status, JSON body, headers; None: drop the connection


class FakeHub:
    """The fake Hub server; ``url`` is its endpoint. Use as a context manager or call ``start``/``stop``."""

    def __init__(self, *, tokens: tuple[str, ...] = ("hf_fake_write_token",), user: str = "fake-user") -> None:
        self.tokens = set(tokens)
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[RecordedRequest] = []
        self.commits: list[Commit] = []
        self.unrouted: list[str] = []
        self.fail_commit: int | str | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_repo(self, repo_id: str, repo_type: str = "model", files: dict[str, bytes] | None = None) -> None:
        """Pre-create a repo, as if it already existed on the Hub."""
        self.repos[(repo_type, repo_id)] = Repo(visibility="public", branches={"main": dict(files or {})})

    def files(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> dict[str, bytes]:
        """The files of a branch of a repo."""
        return dict(self.repos[(repo_type, repo_id)].branches[branch])

    def api_requests(self) -> list[RecordedRequest]:
        """The requests of the Hub API proper (without the agent-harness registry the client fetches)."""
        return [r for r in self.requests if r.path != "/api/agent-harnesses"]

    # ------------------------------------------------------------------ routing

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Answer:
        split = urlsplit(raw_path)
        request = RecordedRequest(method, split.path, parse_qs(split.query), headers, body)
        with self._lock:
            self.requests.append(request)
            return self._route(request)

    def _route(self, request: RecordedRequest) -> Answer:
        parts = [unquote(part) for part in request.path.strip("/").split("/")]
        if request.method == "GET" and parts == ["api", "agent-harnesses"]:
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        if request.headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
            return 401, {"error": "Invalid credentials in Authorization header"}, {}
        if request.method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(request.json())
        if request.method == "POST" and parts == ["api", "validate-yaml"]:
            return self._validate_yaml(request.json())
        if request.method == "POST" and len(parts) >= 5 and parts[0] == "api" and parts[1] in REPO_TYPES:
            repo_type, repo_id, action, revision = REPO_TYPES[parts[1]], "/".join(parts[2:-2]), parts[-2], parts[-1]
            repo = self.repos.get((repo_type, repo_id))
            if repo is None:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            if action == "branch":
                return self._create_branch(repo, revision)
            if revision not in repo.branches:
                return 404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"}
            if action == "preupload":
                return self._preupload(request.json())
            if action == "commit":
                return self._commit(request, repo, repo_type, repo_id, revision)
        self.unrouted.append(f"{request.method} {request.path}")
        return 404, {"error": f"fake hub: no route for {request.method} {request.path}"}, {}

    def _create_repo(self, payload: dict[str, Any]) -> Answer:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return 409, {"error": f"You already created this {repo_type} repo", "url": url}, {}
        self.repos[(repo_type, repo_id)] = Repo(visibility=payload.get("visibility"))
        return 200, {"url": url}, {}

    @staticmethod
    def _validate_yaml(payload: dict[str, Any]) -> Answer:
        content = payload["content"]
        if not content.startswith("---\n"):
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}, {}
        try:
            metadata = yaml.safe_load(content.split("---\n")[1])
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": str(err)}]}, {}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    @staticmethod
    def _create_branch(repo: Repo, branch: str) -> Answer:
        if branch in repo.branches:
            return 409, {"error": "Reference already exists"}, {}
        repo.branches[branch] = dict(repo.branches["main"])
        return 200, {}, {}

    @staticmethod
    def _preupload(payload: dict[str, Any]) -> Answer:
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in payload["files"]
        ]
        return 200, {"files": files}, {}

    def _commit(self, request: RecordedRequest, repo: Repo, repo_type: str, repo_id: str, revision: str) -> Answer:
        if self.fail_commit == DISCONNECT:
            return None
        if self.fail_commit is not None:
            return int(self.fail_commit), {"error": "fake hub: injected failure"}, {}
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        header = lines[0]["value"]
        create_pr = request.query.get("create_pr") == ["1"]
        commit = Commit(repo_type, repo_id, revision, header["summary"], header.get("description", ""), create_pr)
        for line in lines[1:]:
            if line["key"] != "file":
                return 400, {"error": f"fake hub: '{line['key']}' operations are not served; keep test files small"}, {}
            commit.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        oid = hashlib.sha1(f"{len(self.commits)}:{repo_id}".encode()).hexdigest()
        self.commits.append(commit)
        if not create_pr:
            repo.branches[revision].update(commit.files)
        repo_url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        pr_url = f"{repo_url}/discussions/{len(self.commits)}" if create_pr else None
        return 200, {"commitUrl": f"{repo_url}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr_url}, {}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {key.lower(): value for key, value in self.headers.items()}
        answer = self.server.hub.handle(self.command, self.path, headers, body)  # type: ignore[attr-defined]
        if answer is None:
            self.close_connection = True
            return
        status, payload, extra_headers = answer
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra_headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read ``FakeHub.requests`` instead."""
