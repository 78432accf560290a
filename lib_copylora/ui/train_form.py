"""The training form's values → a `TrainRequest`, exactly once, at the edge (STYLE example 2).

`values` maps each field's key `(section, name)` to what its widget holds. Blank text and empty numbers are left
out, so the engine's default (or CopyLoRA's setting, for the preview interval and the subfolder) applies. Sweeps
stay as comma lists here; the job queue expands them. Pure: no gradio, no WebUI.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..train.errors import TrainConfigError
from ..service.train_request import TrainRequest, expand_sweeps, request_from_dict
from .fields import REQUEST, FieldSpec, Key, Widget

MAX_LISTED_RUNS = 12


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _integer(value: Any, spec: FieldSpec) -> int:
    number = float(value)
    if not number.is_integer():
        raise TrainConfigError(f"{spec.label}: {value!r} is not a whole number")
    return int(number)


def widget_value(spec: FieldSpec, value: Any) -> Any:
    """One widget's value as the request wants it; `None` means "leave it out"."""
    if spec.widget is Widget.CHECKBOX:
        return bool(value)
    if _is_blank(value):
        return None
    if spec.widget is Widget.LINES:
        lines = tuple(line.strip() for line in str(value).splitlines() if line.strip())
        return lines or None
    if spec.widget is Widget.INTEGER:
        return _integer(value, spec)
    if spec.widget is Widget.NUMBER:
        return float(value)
    return value.strip() if isinstance(value, str) else value


def _top_level(name: str, value: Any, spec: FieldSpec) -> Any:
    if name in ("new_rank", "new_conv_rank"):  # an Optional[int] the request takes as is
        try:
            return _integer(value, spec)
        except ValueError:
            raise TrainConfigError(f"{spec.label}: {value!r} is not a whole number") from None
    return value


def build_train_request(values: Mapping[Key, Any], specs: Mapping[Key, FieldSpec],
                        resume: bool = False) -> TrainRequest:
    """The request the form describes; `resume` continues from the resume state beside the output."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, raw in values.items():
        spec = specs[key]
        value = widget_value(spec, raw)
        if value is None:
            continue
        section, name = key
        if section == REQUEST:
            top[name] = _top_level(name, value, spec)
        else:
            sections.setdefault(section, {})[name] = value
    if resume:
        sections.setdefault("output", {})["resume"] = True
    if top.get("route", "single") == "single":
        top.pop("dataset_b", None)
        top.pop("reg_b", None)
    if "name" not in top or "dataset_a" not in top:
        raise TrainConfigError("give the run an output name and choose image set A")
    return request_from_dict({**top, **sections})


def describe_runs(request: TrainRequest) -> str:
    """What Start will queue: the run names a sweep expands into."""
    runs = expand_sweeps(request)
    names = [run.name for run in runs]
    listed = ", ".join(names[:MAX_LISTED_RUNS]) + (f", … ({len(names) - MAX_LISTED_RUNS} more)"
                                                    if len(names) > MAX_LISTED_RUNS else "")
    if len(runs) == 1:
        return f"1 run: {listed}"
    duplicate = " — two runs would get the same name: make the swept values differ" \
        if len(set(names)) != len(names) else ""
    return f"{len(runs)} runs, one after another: {listed}{duplicate}"


def preview_runs(values: Mapping[Key, Any], specs: Mapping[Key, FieldSpec]) -> str:
    """`describe_runs` for the form as it stands, or why it cannot be submitted yet."""
    try:
        return describe_runs(build_train_request(values, specs))
    except (TrainConfigError, ValueError) as exc:
        return f"not ready: {exc}"
