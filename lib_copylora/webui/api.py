"""CopyLoRA's HTTP API under /copylora/v1 (registered from on_app_started; see README.md, "The API").

Bad requests and names that would leave the configured folders answer 400 with a one-line `detail`; unknown job
ids 404. Request models are generated from the dataclasses the engine validates, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, create_model

from ..core.errors import CopyLoraError
from ..service.jobs import JobStatus, UnknownJob
from ..service.merge_run import MergeRequest
from ..service.train_request import SECTIONS, TrainRequest, request_from_dict
from . import compat, patching

PREFIX = "/copylora/v1"


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
    return create_model(name, **fields)


TrainRequestModel = _model_from_dataclass(TrainRequest, "CopyLoraTrainRequest",
                                          loose=tuple(SECTIONS))
MergeRequestModel = _model_from_dataclass(MergeRequest, "CopyLoraMergeRequest")


class StopRequest(BaseModel):
    save: bool = Field(False, description="write the LoRA trained so far (and a resume state) before stopping")


class PresetValues(BaseModel):
    values: List[float] = Field(..., description="block weights (17/26 for SD1/SD2, 12/20 for SDXL)")


class ScanRequest(BaseModel):
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
    except CopyLoraError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None


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
                "text": summary.describe().replace(str(service.folders().datasets.resolve()), "")}

    def model_hash() -> dict:
        return _call(service.model_hash)

    route = app.add_api_route
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
