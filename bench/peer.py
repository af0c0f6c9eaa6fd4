"""The peer for `bench.versus`: the synchronous API the service is measured against.

A plain FastAPI app: validate the Create Assistant body with a pydantic model,
one `insert_one` through pymongo, answer 200 with the assistant object or
FastAPI's own 422. It is served as FastAPI is served in production (gunicorn
with uvicorn workers) by `serve()`.

The request model is written out here rather than imported from
`worker.schema`: the peer must not move or break when the service's packages
are restructured, and it keeps the peer independent of the code it is
compared with. The rules are API.md's schema table.

Configuration comes from the environment, read when a worker process starts
(after fork), never at import: `PEER_MONGODB_URI` (with the database in its
path) and `PEER_JOURNALED` ("1": the insert waits for the journal, as the
service's accepting write does).
"""

from __future__ import annotations

import os
import secrets
import string
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.write_concern import WriteConcern

ID_ALPHABET = string.ascii_letters + string.digits


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CodeInterpreterTool(_Strict):
    type: Literal["code_interpreter"]


class RetrievalTool(_Strict):
    type: Literal["retrieval"]


class FunctionDefinition(_Strict):
    name: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class FunctionTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


Tool = Annotated[CodeInterpreterTool | RetrievalTool | FunctionTool, Field(discriminator="type")]


class AssistantCreate(_Strict):
    model: str
    name: Annotated[str, StringConstraints(max_length=256)] | None = None
    description: Annotated[str, StringConstraints(max_length=512)] | None = None
    instructions: Annotated[str, StringConstraints(max_length=32768)] | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] = Field(default_factory=list)
    file_ids: Annotated[list[str], Field(max_length=20)] = Field(default_factory=list)
    metadata: (
        Annotated[
            dict[
                Annotated[str, StringConstraints(max_length=64)],
                Annotated[str, StringConstraints(max_length=512)],
            ],
            Field(max_length=16),
        ]
        | None
    ) = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Runs in each worker process after fork: pymongo clients must not cross a fork.
    client: MongoClient[dict[str, Any]] = MongoClient(
        os.environ["PEER_MONGODB_URI"], serverSelectionTimeoutMS=5000
    )
    journaled = os.environ.get("PEER_JOURNALED") == "1"
    database = client.get_default_database()
    collection = database.get_collection(
        "assistants", write_concern=WriteConcern(j=True) if journaled else None
    )
    # The indexes the contract asks of any assistants collection: unique ids and
    # the list order. Each one is paid on every insert, as in the service.
    collection.create_index("id", unique=True)
    collection.create_index([("created_at", ASCENDING), ("_id", ASCENDING)])
    app.state.assistants = collection
    try:
        yield
    finally:
        client.close()


app = FastAPI(lifespan=lifespan, openapi_url=None)


@app.post("/v1/assistants")
def create_assistant(body: AssistantCreate, request: Request) -> dict[str, Any]:
    # A plain `def`: pymongo blocks, so FastAPI runs it in its thread pool.
    collection: Collection[dict[str, Any]] = request.app.state.assistants
    doc: dict[str, Any] = {
        "id": "asst_" + "".join(secrets.choice(ID_ALPHABET) for _ in range(24)),
        "created_at": int(time.time()),
        "name": body.name,
        "description": body.description,
        "model": body.model,
        "instructions": body.instructions,
        # Tools as the client sent them, without defaults it left out.
        "tools": [tool.model_dump(exclude_unset=True) for tool in body.tools],
        "file_ids": body.file_ids,
        "metadata": body.metadata or {},
    }
    inserted = collection.insert_one(doc).inserted_id
    fields = {k: v for k, v in doc.items() if k not in ("_id", "id")}
    return {"_id": str(inserted), "id": doc["id"], "object": "assistant", **fields}


def serve(
    port: int, mongodb_uri: str, workers: int, log: Path, journaled: bool = False
) -> subprocess.Popen[bytes]:
    """Start the peer under gunicorn with uvicorn workers on 127.0.0.1:`port`."""
    env = {
        **os.environ,
        "PEER_MONGODB_URI": mongodb_uri,
        "PEER_JOURNALED": "1" if journaled else "0",
    }
    return gunicorn("bench.peer:app", port, workers, log, env=env)


# uvicorn's own `uvicorn.workers` is deprecated in favour of this package.
UVICORN_WORKER = "uvicorn_worker.UvicornWorker"


def gunicorn(
    app: str,
    port: int,
    workers: int,
    log: Path,
    worker_class: str = UVICORN_WORKER,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Serve `app` (module:variable, from the project's root) under gunicorn on
    127.0.0.1:`port`, its output appended to `log`."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--log-level",
        "warning",
        "--chdir",
        str(Path(__file__).resolve().parent.parent),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
