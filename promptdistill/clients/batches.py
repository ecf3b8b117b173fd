"""The Batch API (`/v1/files` + `/v1/batches`) through the official openai SDK (issue #15).

A handful of calls per thousands of answers, so the SDK's speed does not matter here (it does
for online sampling, see endpoint.py); what matters is that it speaks the API exactly: multipart
uploads with `purpose="batch"`, `batches.create(endpoint="/v1/chat/completions",
completion_window="24h")`, retrieve, cancel, list, and file content. The SDK retries 429s, 5xx
and dropped connections itself (`max_retries`), which suits calls that are rare and idempotent
or checked (a create that may have happened is looked up by its input file, see batch_api.py).

Errors become one line naming the endpoint, without the key: `UserError`, or `BatchUnavailable`
(a UserError) for what may pass if polled again later (connection lost, 5xx, 429).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import openai
from openai import AsyncOpenAI
from openai.types import Batch

from promptdistill.clients.endpoint import normalize_base_url
from promptdistill.core.errors import UserError
from promptdistill.core.redact import redact, redact_url

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


class BatchUnavailable(UserError):
    """The endpoint could not be reached or answered 5xx/429, after the SDK's own retries."""


@dataclass(slots=True, kw_only=True)
class BatchInfo:
    """What a retrieve says about a batch."""

    id: str
    status: str
    input_file_id: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    total: int = 0
    errors: list[str] = field(default_factory=list)  # why a batch failed (validation)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class BatchClient:
    """One endpoint's files and batches. `async with BatchClient(...) as c:` closes it."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout_s: float = 600.0,
        max_retries: int = 5,
        key_source: str | None = None,  # where the key came from, for a 401 (clients/keys.py)
    ) -> None:
        url = normalize_base_url(base_url)
        self.public_url = redact_url(url)
        self._key = api_key
        self._key_source = key_source
        # servers without keys (vLLM) take any; "EMPTY" is vLLM's own placeholder
        self._client = AsyncOpenAI(
            base_url=url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=max_retries
        )

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    async def upload(self, name: str, data: bytes) -> str:
        """Upload a batch input file; returns its file id."""
        async with self._errors("upload a batch input file to"):
            f = await self._client.files.create(
                file=(name, data, "application/jsonl"), purpose="batch"
            )
        return f.id

    async def create(self, input_file_id: str, metadata: dict[str, str]) -> BatchInfo:
        async with self._errors("create a batch at"):
            b = await self._client.batches.create(
                input_file_id=input_file_id, endpoint="/v1/chat/completions",
                completion_window="24h", metadata=metadata,
            )  # fmt: skip
        return _info(b)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        async with self._errors(f"poll batch {batch_id} at"):
            return _info(await self._client.batches.retrieve(batch_id))

    async def cancel(self, batch_id: str) -> BatchInfo:
        async with self._errors(f"cancel batch {batch_id} at"):
            return _info(await self._client.batches.cancel(batch_id))

    async def find(self, input_file_id: str, newest: int = 100) -> BatchInfo | None:
        """The batch made from `input_file_id`, among the newest ones, if there is one."""
        async with self._errors("list the batches at"):
            page = await self._client.batches.list(limit=newest)
            for b in page.data:
                if b.input_file_id == input_file_id:
                    return _info(b)
        return None

    async def download(self, file_id: str) -> bytes:
        async with self._errors(f"download file {file_id} from"):
            return (await self._client.files.content(file_id)).content

    @contextlib.asynccontextmanager
    async def _errors(self, what: str) -> AsyncIterator[None]:
        """SDK errors as one line that names the endpoint and says what to do."""
        where = self.public_url
        try:
            yield
        except openai.APIConnectionError as e:  # includes timeouts
            raise BatchUnavailable(f"cannot {what} {where}: {self._clean(e)}") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            source = f" from {self._key_source}" if self._key_source else ""
            raise UserError(
                f"{where} answered {e.status_code} ({self._clean(e)}): the API key{source} was "
                "refused; set a valid key in $OPENAI_API_KEY, or name its variable with "
                "--api-key-env or its file with --api-key-file"
            ) from None
        except openai.NotFoundError as e:
            raise UserError(
                f"cannot {what} {where}: 404 ({self._clean(e)}); the endpoint needs the Batch "
                "API's /v1/files and /v1/batches routes (OpenAI has them; for vLLM use "
                "--write-batch-file and `vllm run-batch`)"
            ) from None
        except (openai.RateLimitError, openai.InternalServerError) as e:
            raise BatchUnavailable(
                f"cannot {what} {where}: {e.status_code} ({self._clean(e)})"
            ) from None
        except openai.APIStatusError as e:
            raise UserError(f"cannot {what} {where}: {e.status_code} ({self._clean(e)})") from None

    def _clean(self, e: Exception) -> str:
        message = getattr(e, "message", None) or str(e)
        body = getattr(e, "body", None)
        if isinstance(body, dict):
            message = str((body.get("error") or body).get("message") or message)
        return redact(" ".join(message.split())[:300], [self._key])


def _info(b: Batch) -> BatchInfo:
    counts = b.request_counts
    errors = [e.message or e.code or "" for e in (b.errors.data or [])] if b.errors else []
    return BatchInfo(
        id=b.id, status=b.status, input_file_id=b.input_file_id, output_file_id=b.output_file_id,
        error_file_id=b.error_file_id, completed=counts.completed if counts else 0,
        failed=counts.failed if counts else 0, total=counts.total if counts else 0,
        errors=[e for e in errors if e],
    )  # fmt: skip
