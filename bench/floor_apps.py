"""Two apps that do nothing but answer, for `bench.floors`: what the edge's
framework (Flask under gunicorn's gevent worker) and the peer's (FastAPI under
uvicorn) cost a request before any work of their own.

Each reads the body, decodes it as JSON and answers 202 with a small JSON
object, as the edge's create answers.
"""

from __future__ import annotations

import json
import secrets

from fastapi import FastAPI
from fastapi import Request as FastApiRequest
from fastapi.responses import Response as FastApiResponse
from flask import Flask, Response, request


def _answer(body: bytes) -> bytes:
    json.loads(body)
    return json.dumps({"id": "job_" + secrets.token_hex(12), "status": "queued"}).encode()


flask_app = Flask(__name__)


@flask_app.post("/v1/assistants")
def flask_create() -> Response:
    return Response(_answer(request.get_data()), status=202, mimetype="application/json")


fastapi_app = FastAPI()


@fastapi_app.post("/v1/assistants")
async def fastapi_create(incoming: FastApiRequest) -> FastApiResponse:
    body = await incoming.body()
    return FastApiResponse(_answer(body), status_code=202, media_type="application/json")
