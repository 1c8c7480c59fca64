"""The REST server and web UI: :func:`create_app` builds a FastAPI app around one detector and a concept library.

Endpoints (OpenAPI docs at ``/docs``)::

    GET    /                      the web UI (static files shipped in regionprompt/server/static)
    GET    /health                status, model hash, queue occupancy
    GET    /models                the loaded model
    POST   /detect                multipart: image file + prompts JSON (+ prompt_images files) -> detections
    GET    /concepts              the library, each entry marked compatible with the loaded model or not
    POST   /concepts              multipart: name + prompts JSON (+ image, prompt_images, replace) -> new concept
    POST   /concepts/import       multipart: a concept .safetensors file (+ replace, name)
    GET    /concepts/{name}       one entry
    GET    /concepts/{name}/file  the concept file (.safetensors)
    DELETE /concepts/{name}
    /label/...                    labelling a served image folder (regionprompt serve --images DIR):
                                  list, image, detect, accept / relabel / delete boxes, export COCO / YOLO
                                  (regionprompt.server.label_routes)

Every error is JSON ``{"detail": "message"}`` with a 4xx status for bad input (400 bad prompt or
image, 404 unknown concept or folder image, 409 name taken, 413 too large, 422 missing field), 503 when the
inference queue is full, 504 on timeout; an unexpected failure is a 500 whose body names no
internals (the traceback goes to the server log only).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from regionprompt import __version__
from regionprompt.concepts.files import concept_from_bytes
from regionprompt.concepts.library import (
    ConceptExistsError,
    ConceptLibrary,
    ConceptLibraryError,
    ConceptNameError,
    ConceptNotFoundError,
    check_name,
)
from regionprompt.errors import PromptError, RegionPromptError
from regionprompt.logging_utils import get_logger
from regionprompt.server import jobs
from regionprompt.server.jobs import DetectorLike, ImageTooLargeError
from regionprompt.server.label_routes import add_label_routes
from regionprompt.server.labelling import LabelStore, NoFolderError, UnknownImageError
from regionprompt.server.queue import (
    InferenceQueue,
    QueueFullError,
    RequestTimeoutError,
)
from regionprompt.server.schema import PromptRequest, parse_prompts
from regionprompt.server.settings import ServerSettings
from regionprompt.untrusted import display_name

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = get_logger("server")


class BodyLimitMiddleware:
    """Refuse request bodies above ``max_bytes`` with 413: at once from ``Content-Length``, or while
    streaming for chunked uploads, before the multipart parser spools them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body larger than this server's limit of {self.max_bytes} bytes"
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
                    return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            incoming = await receive()
            if incoming["type"] == "http.request":
                seen += len(incoming.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI passes HTTPExceptions raised while reading the body through unchanged.
                    raise HTTPException(status_code=413, detail=message)
            return incoming

        await self.app(scope, counting_receive, send)


def _fastapi(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose /docs page works offline: ``fastapi-offline`` serves the Swagger UI files
    itself (FastAPI's own page loads them from a CDN, blank without internet)."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(**kwargs)
    return FastAPIOffline(**kwargs)


def _status(exc: RegionPromptError) -> int:
    if isinstance(exc, QueueFullError):
        return 503
    if isinstance(exc, RequestTimeoutError):
        return 504
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, (ConceptNotFoundError, UnknownImageError, NoFolderError)):
        return 404
    if isinstance(exc, ConceptExistsError):
        return 409
    if isinstance(exc, ConceptLibraryError) and not isinstance(exc, ConceptNameError):
        return 503  # the library file is busy or unusable: not the client's fault
    return 400  # PromptError, ImageLoadError, ConceptFileError, ConceptNameError, other user errors


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


async def _read(upload: UploadFile, settings: ServerSettings, what: str) -> tuple[str, bytes]:
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(status_code=413, detail=f"{what} is larger than {settings.max_upload_bytes} bytes")
    # The client's file name only labels messages; it never becomes a path on this machine.
    return display_name(upload.filename, default=what), data


async def _detection_request(prompts: str, prompt_images: list[UploadFile] | None,
                             settings: ServerSettings) -> tuple[PromptRequest, list[tuple[str, bytes]], float]:
    """The parsed prompts of a detect request (at least one positive), its prompt images and its threshold."""
    extra_files = prompt_images or []
    if len(extra_files) > settings.max_prompt_images:
        raise PromptError(f"too many prompt images: {len(extra_files)} (the limit is {settings.max_prompt_images})")
    request = parse_prompts(prompts, num_images=len(extra_files), max_prompts=settings.max_prompts,
                            max_text_length=settings.max_text_length)
    if not request.has_positive:
        raise PromptError("no positive prompt: give at least one text, box, point or concept")
    extra = [await _read(f, settings, f"prompt image {i}") for i, f in enumerate(extra_files)]
    threshold = request.threshold if request.threshold is not None else settings.default_threshold
    return request, extra, threshold


def create_app(detector: DetectorLike, library: ConceptLibrary, settings: ServerSettings | None = None,
               labels: LabelStore | None = None) -> FastAPI:
    """A FastAPI app serving ``detector`` and ``library`` under ``settings`` (see the module doc);
    ``labels``: the image folder to label in the web UI (``/label`` endpoints), or ``None``."""
    settings = settings or ServerSettings()
    queue = InferenceQueue(settings.workers, settings.max_waiting)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.shutdown()

    app = _fastapi(
        title="RegionPrompt",
        version=__version__,
        description="Open-vocabulary detection from text, box and point prompts, and saved concepts.",
        lifespan=lifespan,
    )
    app.state.detector, app.state.library, app.state.settings, app.state.queue = detector, library, settings, queue
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)

    @app.exception_handler(RegionPromptError)
    async def _user_error(_request: Request, exc: RegionPromptError) -> JSONResponse:
        headers = {"Retry-After": "1"} if isinstance(exc, QueueFullError) else None
        return JSONResponse({"detail": str(exc)}, status_code=_status(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await queue.run(fn, *args, timeout=settings.request_timeout_s, **kwargs)

    def concept_entry(info: Any) -> dict[str, Any]:
        return {**info.to_dict(), "compatible": info.model_hash == detector.model_hash}

    # -- pages -------------------------------------------------------------------------------

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/health", summary="Server status")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "model_hash": detector.model_hash, "queue": queue.stats()}

    @app.get("/models", summary="The loaded model")
    async def models() -> dict[str, Any]:
        entry = {"name": settings.model_name, "model_hash": detector.model_hash, "loaded": True,
                 "kind": getattr(detector, "kind", None), "default_threshold": getattr(detector, "default_threshold", None),
                 "description": repr(detector)}
        return {"models": [entry], "active": detector.model_hash}

    @app.get("/settings", summary="The server's limits")
    async def limits() -> dict[str, Any]:
        return asdict(settings)

    # -- detection ---------------------------------------------------------------------------

    @app.post("/detect", summary="Detect the prompted objects in one image")
    async def detect(
        image: Annotated[UploadFile, File(description="the image to search (PNG, JPEG, ...)")],
        prompts: Annotated[str, Form(description='JSON: {"text": [...], "boxes": [[x1,y1,x2,y2]], "points": [], '
                                                 '"negatives": [], "concepts": [], "threshold": 0.3}')],
        prompt_images: Annotated[list[UploadFile] | None, File(description="images that prompts with "
                                                                           "\"image\": k were drawn on")] = None,
    ) -> dict[str, Any]:
        request, extra, threshold = await _detection_request(prompts, prompt_images, settings)
        searched = await _read(image, settings, "image")
        return await run(jobs.run_detection, detector, library, searched, extra, request,
                         max_pixels=settings.max_image_pixels, threshold=threshold)

    # -- concepts ----------------------------------------------------------------------------

    # Library calls may wait on another process's write lock, so they run as sync endpoints
    # (FastAPI's thread pool), never on the event loop.
    @app.get("/concepts", summary="List saved concepts")
    def list_concepts() -> dict[str, Any]:
        return {"concepts": [concept_entry(info) for info in library.list()], "model_hash": detector.model_hash}

    @app.get("/concepts/{name}", summary="One saved concept")
    def get_concept(name: str) -> dict[str, Any]:
        return concept_entry(library.info(name))

    @app.get("/concepts/{name}/file", summary="Download a concept file (.safetensors)")
    def concept_file(name: str) -> Response:
        stored_name = library.info(name).name
        data = library.export_bytes(stored_name)
        # Headers are latin-1: keep the download name to ASCII.
        filename = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in stored_name) + ".safetensors"
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @app.post("/concepts", status_code=201, summary="Save a prompt as a named concept")
    async def add_concept(
        name: Annotated[str, Form(description="the concept's name")],
        prompts: Annotated[str, Form(description="JSON as for /detect (no concepts)")],
        image: Annotated[UploadFile | None, File(description="the image boxes and points were drawn on")] = None,
        prompt_images: Annotated[list[UploadFile] | None, File()] = None,
        replace: Annotated[bool, Form()] = False,
    ) -> dict[str, Any]:
        name = check_name(name)
        if len(name) > settings.max_text_length:
            raise PromptError(f"concept name is longer than {settings.max_text_length} characters")
        extra_files = prompt_images or []
        if len(extra_files) > settings.max_prompt_images:
            raise PromptError(f"too many prompt images: {len(extra_files)} (the limit is {settings.max_prompt_images})")
        request = parse_prompts(prompts, num_images=len(extra_files), max_prompts=settings.max_prompts,
                                max_text_length=settings.max_text_length)
        if not replace and await run_in_threadpool(library.__contains__, name):
            raise ConceptExistsError(f"a concept named {name!r} already exists (send replace=true to overwrite)")
        main = await _read(image, settings, "image") if image is not None else None
        extra = [await _read(f, settings, f"prompt image {i}") for i, f in enumerate(extra_files)]
        concept = await run(jobs.make_concept, detector, name, main, extra, request, max_pixels=settings.max_image_pixels)
        return concept_entry(await run_in_threadpool(library.add, concept, replace=replace))

    @app.post("/concepts/import", status_code=201, summary="Add a concept file (.safetensors)")
    async def import_concept(
        file: Annotated[UploadFile, File(description="a concept .safetensors file")],
        replace: Annotated[bool, Form()] = False,
        name: Annotated[str | None, Form(description="store under this name instead")] = None,
    ) -> dict[str, Any]:
        filename, data = await _read(file, settings, "concept file")
        stored = concept_from_bytes(data, where=filename)
        concept = stored.concept
        if name:
            concept = concept.renamed(check_name(name))
        return concept_entry(await run_in_threadpool(library.add, concept, replace=replace, created=stored.created))

    @app.delete("/concepts/{name}", summary="Delete a saved concept")
    def delete_concept(name: str) -> dict[str, Any]:
        library.remove(name)
        return {"deleted": check_name(name)}

    add_label_routes(app, labels, detector=detector, library=library, settings=settings, run=run, detection_request=_detection_request)
    return app

