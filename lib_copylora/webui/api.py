"""CopyLoRA's HTTP API under /copylora/v1 (registered from on_app_started; see docs/api.md).

Every bad request answers a 4xx with a one-line `detail`: 400 for a request that cannot run (unknown fields
included, named with the closest known one), 404 for an unknown job, 409 for an output a queued or running job
already writes. Anything else is a bug: 500 with a short detail and one line in the console. Request models are
generated from the dataclasses the engine validates, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing
from typing import Any, Collection, Dict, List, Mapping, Optional

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.errors import CopyLoraError
from ..service.jobs import JobStatus, OutputTaken, UnknownJob
from ..service.merge_run import MergeRequest
from ..service.train_request import SECTIONS, TrainRequest, request_from_dict, unknown_fields
from . import compat, patching

PREFIX = "/copylora/v1"
log = logging.getLogger("copylora")
StrictModel = compat.strict_model_base()


def _model_from_dataclass(cls, name: str, loose: tuple[str, ...] = ()) -> type[BaseModel]:
    """A pydantic model with the dataclass's fields, defaults and help texts. `loose` fields take any JSON."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        hint = Any if f.name in loose else hints[f.name]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = None  # sections: None means "all defaults"
            hint = Optional[hint]
        else:
            default = ...
        fields[f.name] = (hint, Field(default, description=f.metadata.get("help", "")))
    return create_model(name, __base__=StrictModel, **fields)


TrainRequestModel = _model_from_dataclass(TrainRequest, "CopyLoraTrainRequest",
                                          loose=tuple(SECTIONS))
MergeRequestModel = _model_from_dataclass(MergeRequest, "CopyLoraMergeRequest")


class StopRequest(StrictModel):  # type: ignore[valid-type,misc]
    save: bool = Field(False, description="write the LoRA trained so far (and a resume state) before stopping")


class PresetValues(StrictModel):  # type: ignore[valid-type,misc]
    values: List[float] = Field(..., description="block weights (17/26 for SD1/SD2, 12/20 for SDXL)")


class ScanRequest(StrictModel):  # type: ignore[valid-type,misc]
    dataset: str = Field(..., description="a folder inside the datasets folder")
    settings: Dict[str, Any] = Field(default_factory=dict, description="DatasetConfig fields (resolution, ...)")


class SubmitResponse(BaseModel):
    job_ids: List[str]


class JobModel(BaseModel):
    id: str
    group: str
    name: str
    state: str
    phase: str
    step: int
    total_steps: int
    losses: List[float]
    samples: List[str]
    result: Optional[str]
    tag: Optional[str]
    written: List[str]
    error: Optional[str]
    log: List[str]
    submitted_at: float
    started_at: Optional[float]
    finished_at: Optional[float]
    steps_per_s: Optional[float] = None


def job_model(status: JobStatus) -> JobModel:
    values = dataclasses.asdict(status)
    values["state"] = status.state.value
    return JobModel(**values)


def _call(function, *args):
    """Run a service call; our typed errors become HTTP answers with their one-line message."""
    try:
        return function(*args)
    except UnknownJob as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except OutputTaken as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except CopyLoraError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None


def _internal_error(request, exc: Exception) -> JSONResponse:
    """A bug, not a bad request: one line in the console saying where, a short 500 for the client (the WebUI's
    own handler would print a whole stack)."""
    log.error("CopyLoRA API: internal error in %s %s: %s: %s (at %s)", request.method, request.url.path,
              type(exc).__name__, _one_line(exc), _innermost_frame(exc))
    return JSONResponse(status_code=500, content={"detail": f"CopyLoRA internal error ({type(exc).__name__}); "
                                                            "the server console says where"})


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _innermost_frame(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"


def describe_invalid(errors: list[dict], known: Collection[str]) -> str:
    """pydantic's validation errors (either major version) as one line; unknown fields name the closest known
    one."""
    unknown, problems = [], []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        if error.get("type") in compat.EXTRA_FIELD_ERRORS and len(loc) == 1:
            unknown.append(loc[0])
        elif "json" in str(error.get("type", "")):  # json_invalid (pydantic 2), value_error.jsondecode (1)
            reason = (error.get("ctx") or {}).get("error") or error.get("msg", "")
            problems.append(f"the body is not valid JSON: {_one_line(reason, 120)}")
        else:
            problems.append(f"{'.'.join(loc) or 'body'}: {_one_line(error.get('msg', 'invalid'), 120)}")
    parts = [unknown_fields("request", unknown, known)] if unknown else []
    parts += problems[:3] + ([f"and {len(problems) - 3} more"] if len(problems) > 3 else [])
    return "; ".join(parts)


def _strict_route(known_fields: Mapping[str, Collection[str]]) -> type[APIRoute]:
    """Our routes answer a request the body model refuses with 400 and one line, not FastAPI's 422 list, and a
    bug with `_internal_error` (the WebUI's own routes and handlers stay as they are)."""

    class CopyLoraRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()
            known = known_fields.get(self.path, ())

            async def answer(request):
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return JSONResponse(status_code=400, content={"detail": describe_invalid(exc.errors(), known)})
                except StarletteHTTPException:
                    raise
                except Exception as exc:  # the API's last line of defence: report the bug, keep answering
                    return _internal_error(request, exc)

            return answer

    return CopyLoraRoute


def _drop_old_routes(app: FastAPI) -> None:
    """A UI reload runs on_app_started again on the same app: old routes would shadow the new service's."""
    app.router.routes[:] = [r for r in app.router.routes if not getattr(r, "path", "").startswith(PREFIX)]


def _own_routes(app: FastAPI) -> None:
    """Drop routes an earlier copy left, and record how ours go away on unload (webui/patching.py)."""
    _drop_old_routes(app)
    patching.add(("api routes", id(app)), app, _drop_old_routes, "API routes")


def register_routes(app: FastAPI, service) -> None:
    _own_routes(app)

    def submit(body: TrainRequestModel) -> SubmitResponse:  # type: ignore[valid-type]
        values = {k: v for k, v in compat.request_values(body).items() if v is not None}
        return SubmitResponse(job_ids=_call(lambda: service.submit(request_from_dict(values))))

    def jobs() -> List[JobModel]:
        return [job_model(s) for s in service.jobs.list()]

    def job(job_id: str) -> JobModel:
        return job_model(_call(service.jobs.status, job_id))

    def stop(job_id: str, body: StopRequest) -> JobModel:
        return job_model(_call(service.stop, job_id, body.save))

    def results() -> List[JobModel]:
        return [job_model(s) for s in service.results()]

    def merge(body: MergeRequestModel) -> dict:  # type: ignore[valid-type]
        result = _call(lambda: service.merge(MergeRequest(**compat.request_values(body))))
        return {"result": result.name, "tag": result.tag, "modules": result.modules, "warnings": result.warnings}

    def presets() -> Dict[str, List[float]]:
        return {k: list(v) for k, v in _call(service.presets).items()}

    def put_preset(name: str, body: PresetValues) -> Dict[str, List[float]]:
        return {k: list(v) for k, v in _call(service.save_preset, name, body.values).items()}

    def delete_preset(name: str) -> Dict[str, List[float]]:
        return {k: list(v) for k, v in _call(service.delete_preset, name).items()}

    def datasets() -> List[str]:
        return _call(service.datasets)

    def scan(body: ScanRequest) -> dict:
        summary = _call(service.scan, body.dataset, body.settings)
        return {"folders": [{"name": service.relative_dataset(f.path), "repeats": f.repeats, "images": f.images,
                             "captioned": f.captioned, "regularisation": f.is_reg} for f in summary.folders],
                "images": summary.images, "samples_per_epoch": summary.samples_per_epoch,
                "captioned": summary.captioned, "caption_coverage": summary.caption_coverage,
                "buckets": [{"width": w, "height": h, "samples": n} for (w, h), n in sorted(summary.buckets.items())],
                "batches_per_epoch": summary.batches_per_epoch, "notes": summary.notes,
                # the folder resolved, not the file: a link to nowhere is listed under its own name
                "unreadable": [{"file": f"{service.relative_dataset(u.path.parent)}/{u.path.name}", "reason": u.reason}
                               for u in summary.unreadable],
                "text": summary.describe().replace(str(service.folders().datasets.resolve()), "")}

    def model_hash() -> dict:
        return _call(service.model_hash)

    known = {f"{PREFIX}/train": compat.model_field_names(TrainRequestModel),
             f"{PREFIX}/merge": compat.model_field_names(MergeRequestModel),
             f"{PREFIX}/jobs/{{job_id}}/stop": compat.model_field_names(StopRequest),
             f"{PREFIX}/presets/{{name}}": compat.model_field_names(PresetValues),
             f"{PREFIX}/datasets/scan": compat.model_field_names(ScanRequest)}
    route = functools.partial(app.router.add_api_route, route_class_override=_strict_route(known))
    route(f"{PREFIX}/train", submit, methods=["POST"], response_model=SubmitResponse)
    route(f"{PREFIX}/jobs", jobs, methods=["GET"], response_model=List[JobModel])
    route(f"{PREFIX}/jobs/{{job_id}}", job, methods=["GET"], response_model=JobModel)
    route(f"{PREFIX}/jobs/{{job_id}}/stop", stop, methods=["POST"], response_model=JobModel)
    route(f"{PREFIX}/results", results, methods=["GET"], response_model=List[JobModel])
    route(f"{PREFIX}/merge", merge, methods=["POST"])
    route(f"{PREFIX}/presets", presets, methods=["GET"])
    route(f"{PREFIX}/presets/{{name}}", put_preset, methods=["PUT"])
    route(f"{PREFIX}/presets/{{name}}", delete_preset, methods=["DELETE"])
    route(f"{PREFIX}/datasets", datasets, methods=["GET"])
    route(f"{PREFIX}/datasets/scan", scan, methods=["POST"])
    route(f"{PREFIX}/model-hash", model_hash, methods=["GET"])
