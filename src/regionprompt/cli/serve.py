"""``regionprompt serve``: the REST API and the web UI (FastAPI + uvicorn) on one detector."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from regionprompt.errors import RegionPromptError
from regionprompt.logging_utils import get_logger


def register(subparsers: argparse._SubParsersAction) -> None:
    from regionprompt.server.settings import ServerSettings

    defaults = ServerSettings()
    parser = subparsers.add_parser(
        "serve",
        help="run the REST API and web UI",
        description="Serve detection over HTTP: the web UI at /, the API (POST /detect, /concepts, /models, /health) "
        "with OpenAPI docs at /docs. Binds to 127.0.0.1 unless --host says otherwise.",
        epilog="example: regionprompt serve --port 8000 --model runs/detector --images photos/  "
               "(then open http://127.0.0.1:8000/)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--model", default="default", help="detector folder, or 'default' (the shipped model)")
    parser.add_argument("--library", type=Path, help="concept library file (default $REGIONPROMPT_HOME/concepts.db)")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="a folder of images to label in the web UI (browse, detect, accept / relabel / delete "
                             "boxes, export COCO or YOLO); only its images are ever served")
    parser.add_argument("--labels", type=Path, metavar="FILE",
                        help="where accepted labels are kept (default DIR/.regionprompt-labels/labels.json; "
                             "exports go beside it, in export/)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help=f"inference threads (default {defaults.workers})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the whole server (default: torch's own, one per core); with --workers 2 "
                        "on a 2-core machine, --threads 1 lets two requests run side by side instead of competing")
    parser.add_argument("--max-waiting", type=int, default=defaults.max_waiting,
                        help=f"requests that may wait for a worker before 503 (default {defaults.max_waiting})")
    parser.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20,
                        help=f"largest request body in MiB (default {defaults.max_upload_bytes / 2**20:g})")
    parser.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels,
                        help=f"largest image, width x height (default {defaults.max_image_pixels})")
    parser.add_argument("--max-prompts", type=int, default=defaults.max_prompts,
                        help=f"most prompts per request (default {defaults.max_prompts})")
    parser.add_argument("--timeout", type=float, default=defaults.request_timeout_s,
                        help=f"seconds a request may wait for its result (default {defaults.request_timeout_s:g})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from regionprompt.server.app import create_app
    except ImportError as exc:
        raise RegionPromptError(f"the server needs the 'server' extra ({exc.name} is missing): "
                                "pip install 'regionprompt[server]'") from None
    from regionprompt.api import Detector
    from regionprompt.concepts.library import ConceptLibrary
    from regionprompt.server.settings import ServerSettings

    if not 0 < args.port < 65536:
        raise RegionPromptError(f"--port must be in 1..65535, got {args.port}")
    if args.threads is not None:
        if args.threads < 1:
            raise RegionPromptError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    settings = ServerSettings(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_image_pixels=args.max_image_pixels,
        max_prompts=args.max_prompts,
        request_timeout_s=args.timeout,
        workers=args.workers,
        max_waiting=args.max_waiting,
        model_name=str(args.model),
    )
    if args.labels is not None and args.images is None:
        raise RegionPromptError("--labels needs --images DIR (the folder the labels belong to)")
    labels = None
    if args.images is not None:
        from regionprompt.server.labelling import LabelStore

        labels = LabelStore(args.images, args.labels, max_name_length=settings.max_text_length)
    library = ConceptLibrary(args.library)
    detector = Detector.load(args.model, concept_library=library)
    log = get_logger("server")
    try:
        exposed = not ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        exposed = args.host != "localhost"
    if exposed:
        log.warning("binding %s: anyone who can reach this machine can use this server (no authentication)", args.host)
    log.info("model %s (%s), concepts in %s", args.model, detector.model_hash[:12], library.path)
    print(f"RegionPrompt UI: http://{args.host}:{args.port}/   API docs: http://{args.host}:{args.port}/docs", flush=True)
    if labels is not None:
        log.info("labelling %d images of %s; labels in %s", len(labels.files), labels.folder, labels.labels_file)
    uvicorn.run(create_app(detector, library, settings, labels), host=args.host, port=args.port, log_level="info")
    return 0
