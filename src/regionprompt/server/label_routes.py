"""The labelling endpoints under ``/label`` (see :mod:`regionprompt.server.labelling` for the store).

An image is named by the ``file`` query parameter: its path relative to the served folder, exactly as
``GET /label/images`` lists it. Every endpoint answers 404 when the server serves no folder.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from regionprompt.server import jobs
from regionprompt.server.labelling import LabelStore, NoFolderError
from regionprompt.server.settings import ServerSettings

FileQuery = Annotated[str, Query(description="the image: its path relative to the served folder, as GET /label/images lists it")]


class BoxIn(BaseModel):
    """A box to accept."""

    box: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] pixels (clipped to the image)")
    name: str = Field(description="category name")
    score: float | None = Field(default=None, description="the detector's score, or null for a drawn box")


class BoxesIn(BaseModel):
    boxes: list[BoxIn] = Field(default_factory=list, max_length=10_000)


class RelabelIn(BaseModel):
    name: str = Field(description="the new category name")


class ExportIn(BaseModel):
    format: Literal["coco", "yolo"]


class BoxOut(BaseModel):
    box: list[float]
    name: str
    score: float | None


class ImageLabels(BaseModel):
    """One image's accepted boxes; ``done``: the image is in the labelled set (exported)."""

    file: str
    width: int
    height: int
    done: bool
    boxes: list[BoxOut]


class ImageRow(BaseModel):
    file: str
    done: bool
    boxes: int


class FolderListing(BaseModel):
    folder: str = Field(description="the served folder's name")
    images: list[ImageRow]
    categories: list[str] = Field(description="label names used so far, first-use order")


class ExportOut(BaseModel):
    format: str
    folder: str = Field(description="where the export was written on the server")
    main_file: str
    images: int
    annotations: int
    categories: list[str]
    download: str = Field(description="GET this path for a zip of the export")


def add_label_routes(app: Any, store: LabelStore | None, *, detector: Any, library: Any, settings: ServerSettings,
                     run: Callable[..., Awaitable[Any]], detection_request: Callable[..., Awaitable[Any]]) -> None:
    """Register the ``/label`` endpoints on ``app``; ``run`` queues inference, ``detection_request`` checks and
    reads a detect request's prompts and prompt images (as ``POST /detect`` does)."""
    router = APIRouter(prefix="/label", tags=["labelling"])

    def served() -> LabelStore:
        if store is None:
            raise NoFolderError("this server serves no image folder: start it with `regionprompt serve --images DIR`")
        return store

    # The store's calls touch files and take its lock: sync endpoints, so FastAPI runs them in its thread pool.

    @router.get("/images", summary="The served folder's images and how far their labelling is", response_model=FolderListing)
    def list_folder(rescan: bool = False) -> dict[str, Any]:
        labels = served()
        if rescan:
            labels.rescan()
        return {"folder": labels.folder.name, "images": labels.summary(), "categories": labels.categories}

    @router.get("/image", summary="One image file of the folder", response_class=FileResponse)
    def image_file(file: FileQuery) -> FileResponse:
        path = served().path_of(file)
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    @router.get("/labels", summary="One image's accepted boxes", response_model=ImageLabels)
    def get_labels(file: FileQuery) -> dict[str, Any]:
        return served().labels(file)

    @router.post("/labels/boxes", summary="Accept boxes on an image (an empty list marks it done)",
                 response_model=ImageLabels)
    def accept(file: FileQuery, body: BoxesIn) -> dict[str, Any]:
        return served().accept(file, [b.model_dump() for b in body.boxes])

    @router.put("/labels", summary="Set an image's boxes (it is then done, even with none)", response_model=ImageLabels)
    def replace(file: FileQuery, body: BoxesIn) -> dict[str, Any]:
        return served().replace(file, [b.model_dump() for b in body.boxes])

    @router.delete("/labels", summary="Forget an image's labels (not done, left out of exports)",
                   response_model=ImageLabels)
    def forget(file: FileQuery) -> dict[str, Any]:
        return served().forget(file)

    @router.patch("/labels/boxes/{index}", summary="Relabel one accepted box", response_model=ImageLabels)
    def relabel(file: FileQuery, index: int, body: RelabelIn) -> dict[str, Any]:
        return served().relabel(file, index, body.name)

    @router.delete("/labels/boxes/{index}", summary="Delete one accepted box", response_model=ImageLabels)
    def delete(file: FileQuery, index: int) -> dict[str, Any]:
        return served().delete(file, index)

    @router.post("/detect", summary="Detect the prompted objects in one image of the folder")
    async def detect(
        file: FileQuery,
        prompts: Annotated[str, Form(description="JSON as for POST /detect")],
        prompt_images: Annotated[list[UploadFile] | None, File(description="images that prompts with "
                                                                           "\"image\": k were drawn on")] = None,
    ) -> dict[str, Any]:
        path = served().path_of(file)
        request, extra, threshold = await detection_request(prompts, prompt_images, settings)
        data = await run_in_threadpool(path.read_bytes)
        body = await run(jobs.run_detection, detector, library, (file, data), extra, request,
                         max_pixels=settings.max_image_pixels, threshold=threshold)
        return {**body, "file": file}

    @router.post("/export", summary="Write the labelled images as COCO or YOLO on the server", response_model=ExportOut)
    def export(body: Annotated[ExportIn, Body()]) -> dict[str, Any]:
        result = served().export(body.format)
        return {"format": result.format, "folder": str(result.folder), "main_file": str(result.main_file),
                "images": result.images, "annotations": result.annotations, "categories": list(result.categories),
                "download": f"/label/export/{result.format}"}

    @router.get("/export/{fmt}", summary="Download the last export as a zip", response_class=Response)
    def download(fmt: str) -> Response:
        data = served().export_zip(fmt)
        name = f"{served().folder.name or 'labels'}-{fmt}.zip"
        safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in name)
        return Response(data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{safe}"'})

    app.include_router(router)
