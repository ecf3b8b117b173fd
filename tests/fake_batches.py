"""The OpenAI Batch API for the fake server: `/v1/files` and `/v1/batches` (issue #15).

    with start_fake_server(batches=FakeBatches([BatchPlan(outcome="expired")])) as server:
        server.batches.created      # batch ids, in order
        server.asked["..."]         # each answered line counts as an ask, as online requests do

Routes: POST /v1/files (multipart: `purpose`, `file`), GET /v1/files/{id}, GET
/v1/files/{id}/content, POST /v1/batches, GET /v1/batches (newest first, `limit`, `after`),
GET /v1/batches/{id}, POST /v1/batches/{id}/cancel.

A batch follows its plan (`plans[i]` for the i-th batch created; the last plan repeats), by
the clock: `validating` for `validating_s`, then `in_progress` for `in_progress_s` (its
request_counts growing), then `completed`, `expired` (only `answer_fraction` of its lines
answered; the rest in the error file as `batch_expired`), or `failed` (validation errors, no
output). A cancel makes it `cancelling`, and `cancelled` on the next retrieve, with the lines
answered so far. Each line is answered by the server's chat logic (`FakeOpenAI.completion`), so
the server's `faults` apply per line: a `status` fault puts the line in the error file, `empty`,
`length` and `content_filter` shape its answer, `malformed` gives a body with no choices. Output
lines come shuffled (seeded) unless `shuffle=False`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

TERMINAL = ("completed", "expired", "failed", "cancelled")


@dataclass
class BatchPlan:
    outcome: str = "completed"  # completed | expired | failed
    validating_s: float = 0.0
    in_progress_s: float = 0.1
    answer_fraction: float = 1.0  # for expired: the share of lines answered before it expired
    shuffle: bool = True
    errors: list[str] = field(default_factory=lambda: ["injected validation failure"])


@dataclass
class _Batch:
    id: str
    input_file_id: str
    plan: BatchPlan
    lines: list[dict[str, Any]]
    created: float
    metadata: dict[str, str]
    status: str = "validating"
    cancel_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    answered: int = 0
    failed: int = 0
    polls: int = 0


@dataclass
class FakeBatches:
    plans: list[BatchPlan] = field(default_factory=lambda: [BatchPlan()])
    seed: int = 0
    # file id: (data, purpose, name)
    files: dict[str, tuple[bytes, str, str]] = field(default_factory=dict)
    batches: dict[str, _Batch] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    uploads: int = 0
    cancels: int = 0
    uploaded_at: list[float] = field(default_factory=list)  # monotonic time of each upload
    created_at: list[float] = field(default_factory=list)  # ... and of each batch created

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._server: Any = None

    def add_routes(self, app: web.Application, server: Any) -> None:
        self._server = server
        r = app.router
        r.add_post("/v1/files", self._upload)
        r.add_get("/v1/files/{id}", self._file)
        r.add_get("/v1/files/{id}/content", self._content)
        r.add_post("/v1/batches", self._create)
        r.add_get("/v1/batches", self._list)
        r.add_get("/v1/batches/{id}", self._retrieve)
        r.add_post("/v1/batches/{id}/cancel", self._cancel)

    # ----------------------------------------------------------------------- files

    def _authorized(self, request: web.Request) -> bool:
        key = self._server.api_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    async def _upload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided.")
        form = await request.post()
        purpose, upload = form.get("purpose"), form.get("file")
        if not isinstance(upload, web.FileField):
            return _error(400, "no file in the upload")
        data = upload.file.read()
        if purpose != "batch":
            return _error(400, f"purpose {purpose!r}: this fake takes batch files only")
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = (data, str(purpose), upload.filename)
        self.uploads += 1
        self.uploaded_at.append(time.monotonic())
        return web.json_response(self._file_object(file_id))

    def _file_object(self, file_id: str) -> dict[str, Any]:
        data, purpose, name = self.files[file_id]
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": purpose, "status": "processed"}  # fmt: skip

    async def _file(self, request: web.Request) -> web.Response:
        file_id = request.match_info["id"]
        if file_id not in self.files:
            return _error(404, f"No such File object: {file_id}")
        return web.json_response(self._file_object(file_id))

    async def _content(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided.")
        file_id = request.match_info["id"]
        if file_id not in self.files:
            return _error(404, f"No such File object: {file_id}")
        return web.Response(body=self.files[file_id][0], content_type="application/octet-stream")

    def _add_file(self, lines: list[bytes], purpose: str) -> str | None:
        if not lines:
            return None
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = (b"".join(line + b"\n" for line in lines), purpose, "out.jsonl")
        return file_id

    # ----------------------------------------------------------------------- batches

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided.")
        body = await request.json()
        file_id = body.get("input_file_id")
        if file_id not in self.files:
            return _error(404, f"No such File object: {file_id}")
        if body.get("endpoint") != "/v1/chat/completions":
            return _error(400, f"endpoint {body.get('endpoint')!r} is not supported here")
        if body.get("completion_window") != "24h":
            return _error(400, "completion_window must be 24h")
        n = len(self.created)
        plan = self.plans[min(n, len(self.plans) - 1)]
        lines = [orjson.loads(x) for x in self.files[file_id][0].splitlines() if x.strip()]
        batch = _Batch(f"batch_{n + 1}", file_id, plan, lines, time.monotonic(),
                       body.get("metadata") or {})  # fmt: skip
        bad = self._invalid(lines)
        if bad:
            batch.plan = BatchPlan(outcome="failed", validating_s=plan.validating_s, errors=[bad])
        self.batches[batch.id] = batch
        self.created.append(batch.id)
        self.created_at.append(time.monotonic())
        return web.json_response(self._object(batch))

    def _invalid(self, lines: list[dict[str, Any]]) -> str:
        seen: set[str] = set()
        for i, line in enumerate(lines, 1):
            cid = line.get("custom_id")
            if not isinstance(cid, str) or cid in seen:
                return f"line {i}: custom_id missing or not unique"
            seen.add(cid)
            if line.get("method") != "POST" or line.get("url") != "/v1/chat/completions":
                return f"line {i}: method must be POST and url /v1/chat/completions"
            if (line.get("body") or {}).get("model") not in self._server.models:
                return f"line {i}: model {(line.get('body') or {}).get('model')!r} not found"
        return ""

    async def _list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", 20))
        after = request.query.get("after")
        ids = list(reversed(self.created))
        if after in ids:
            ids = ids[ids.index(after) + 1 :]
        page = [self._object(self.batches[i]) for i in ids[:limit]]
        return web.json_response({"object": "list", "data": page, "has_more": len(ids) > limit,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None})  # fmt: skip

    async def _retrieve(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided.")
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, f"No batch {request.match_info['id']}")
        batch.polls += 1
        self._advance(batch)
        return web.json_response(self._object(batch))

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, f"No batch {request.match_info['id']}")
        self._advance(batch)
        if batch.status in TERMINAL:
            return _error(400, f"Cannot cancel a batch with status {batch.status}.")
        self.cancels += 1
        batch.status, batch.cancel_at = "cancelling", time.monotonic()
        return web.json_response(self._object(batch))

    def _progress(self, batch: _Batch, now: float) -> float:
        start = batch.created + batch.plan.validating_s
        return min(1.0, max(0.0, (now - start) / max(batch.plan.in_progress_s, 1e-9)))

    def _advance(self, batch: _Batch) -> None:
        """Move `batch` along its plan, by the clock; answer its lines when it ends."""
        if batch.status in TERMINAL:
            return
        now = time.monotonic()
        plan = batch.plan
        if batch.status == "cancelling":
            self._finish(batch, "cancelled", self._progress(batch, batch.cancel_at or now))
            return
        if now < batch.created + plan.validating_s:
            return
        if plan.outcome == "failed":
            batch.status = "failed"
            return
        if self._progress(batch, now) < 1.0:
            batch.status = "in_progress"
            return
        fraction = plan.answer_fraction if plan.outcome == "expired" else 1.0
        self._finish(batch, plan.outcome, fraction)

    def _finish(self, batch: _Batch, status: str, fraction: float) -> None:
        order = list(batch.lines)
        if batch.plan.shuffle:
            self._rng.shuffle(order)
        cut = int(round(len(order) * fraction))
        out, err = [], []
        for line in order[:cut]:
            good, raw = self._answer_line(line)
            (out if good else err).append(raw)
        for line in order[cut:]:
            code = "batch_expired" if status == "expired" else "batch_cancelled"
            err.append(orjson.dumps({
                "id": f"batch_req_{line['custom_id']}", "custom_id": line["custom_id"],
                "response": None,
                "error": {"code": code, "message": "This request could not be executed before "
                          "the batch ended."},
            }))  # fmt: skip
        batch.answered, batch.failed = len(out), len(err)
        batch.output_file_id = self._add_file(out, "batch_output")
        batch.error_file_id = self._add_file(err, "batch_output")
        batch.status = status

    def _answer_line(self, line: dict[str, Any]) -> tuple[bool, bytes]:
        """(went well, output line) for one request line, as the chat route would answer it."""
        server = self._server
        body = line["body"]
        messages = body["messages"]
        prompt = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        server.requests += 1
        server.asked[prompt] += 1
        fault = server._pick_fault(prompt) if server.faults else None
        kind = fault.kind if fault else "ok"
        rid = f"batch_req_{server.requests}"
        if fault is not None and kind == "status":
            err = {"message": fault.message or f"injected {fault.status}",
                   "type": "invalid_request_error", "code": fault.code}  # fmt: skip
            response = {"status_code": fault.status, "request_id": rid, "body": {"error": err}}
            return False, orjson.dumps(
                {"id": rid, "custom_id": line["custom_id"], "response": response, "error": None}
            )
        if kind == "malformed":
            data: dict[str, Any] = {"id": "x", "object": "chat.completion"}
        else:
            data, _, _ = server.completion(body, messages, prompt, kind)
        response = {"status_code": 200, "request_id": rid, "body": data}
        return True, orjson.dumps(
            {"id": rid, "custom_id": line["custom_id"], "response": response, "error": None}
        )

    def run_batch(self, data: bytes) -> bytes:
        """Answer a whole batch input file at once, as `vllm run-batch -i F -o OUT` does: one
        output line per request, failures included, in shuffled order."""
        lines = [orjson.loads(x) for x in data.splitlines() if x.strip()]
        self._rng.shuffle(lines)
        return b"".join(self._answer_line(line)[1] + b"\n" for line in lines)

    def _object(self, batch: _Batch) -> dict[str, Any]:
        total = len(batch.lines)
        done = batch.answered
        failed = batch.failed
        if batch.status == "in_progress":
            done = int(total * self._progress(batch, time.monotonic()))
        errors = None
        if batch.status == "failed":
            errors = {"object": "list", "data": [
                {"code": "invalid_request", "message": m, "param": None, "line": None}
                for m in batch.plan.errors
            ]}  # fmt: skip
        return {
            "id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions",
            "errors": errors, "input_file_id": batch.input_file_id, "completion_window": "24h",
            "status": batch.status, "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id, "created_at": int(time.time()),
            "request_counts": {"total": total, "completed": done, "failed": failed},
            "metadata": batch.metadata,
        }  # fmt: skip


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": None}}  # fmt: skip
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
