"""Widgets in the WebUI's look: one gradio component per `FieldSpec`, its help as `info=`, tool buttons.

Written for gradio 3.41 (WebUI v1.10.1). Where gradio 4 (Forge) differs, webui/compat.py says how (the
JavaScript hook of an event is `_js=` in 3.x and `js=` in 4.x).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import gradio as gr
from ..webui import compat
from .fields import FieldSpec, Widget

_host = compat.ui_components()  # the WebUI's look (docs/architecture.md §3)
FormRow, InputAccordion, ToolButton = _host.FormRow, _host.InputAccordion, _host.ToolButton

__all__ = ["FormRow", "InputAccordion", "ToolButton", "field_component", "tool_button", "js", "not_saved",
           "hover", "all_updates", "guarded"]
REFRESH_SYMBOL = "\U0001f504"  # 🔄, the WebUI's refresh button


def js(function_name: str) -> dict:
    """Keyword arguments that run a JavaScript function (from javascript/copylora.js) on an event."""
    return {compat.js_event_argument(): function_name}


def not_saved(*components: Any) -> None:
    """Keep the WebUI from saving these as UI defaults (names of files and runs, outputs of the tab)."""
    for component in components:
        component.do_not_save_to_config = True


def hover(component: Any, text: str) -> Any:
    """A hover tooltip the WebUI's hints.js shows (it needs an elem_id); ignored outside the WebUI."""
    component.webui_tooltip = text
    return component


def field_component(spec: FieldSpec, value: Any) -> Any:
    common = {"label": spec.label, "info": spec.help, "elem_id": spec.elem_id}
    if spec.widget is Widget.CHECKBOX:
        return gr.Checkbox(value=bool(value), **common)
    if spec.widget is Widget.DROPDOWN:
        if len(spec.choices) <= 3:
            return gr.Radio(choices=list(spec.choices), value=value, **common)
        return gr.Dropdown(choices=list(spec.choices), value=value, **common)
    if spec.widget in (Widget.NUMBER, Widget.INTEGER):
        return gr.Number(value=value, precision=0 if spec.widget is Widget.INTEGER else None, **common)
    if spec.widget is Widget.LINES:
        return gr.Textbox(value=value, lines=2, **common)
    return gr.Textbox(value=value, lines=1, **common)


def tool_button(elem_id: str, tooltip: str, symbol: str = REFRESH_SYMBOL) -> Any:
    return hover(ToolButton(value=symbol, elem_id=elem_id), tooltip)


def all_updates(outputs: Iterable[Any], changes: dict) -> dict:
    """An answer for every output: the given changes, and "leave as is" for the rest (gradio 3 needs one each)."""
    return {component: changes.get(component, gr.update()) for component in outputs}


def guarded(function: Callable, message: Any, errors: tuple[type[BaseException], ...],
            outputs: Iterable[Any]) -> Callable:
    """`function`, with the expected errors shown in `message` instead of a gradio error box."""
    outputs = list(outputs)

    def run(*args):
        try:
            return function(*args)
        except errors as exc:
            return all_updates(outputs, {message: f"⚠️ {exc}"})

    return run
