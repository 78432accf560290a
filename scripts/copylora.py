"""CopyLoRA's entry script: the composition root. It wires hooks, axes and callbacks; the logic lives in
lib_copylora. The WebUI puts the extension root on sys.path only while it runs this file, so the package is
imported here, at the top."""

from modules import script_callbacks, scripts

from lib_copylora.ui.tab import CopyLoraTab
from lib_copylora.webui import xyz_axes
from lib_copylora.webui import patching
from lib_copylora.webui.prompt_hook import BlockWeightHook
from lib_copylora.webui.service_host import WebUIServiceHost
from lib_copylora.service.service import CopyLoraService
from lib_copylora.webui.api import register_routes
from lib_copylora.webui.settings import register_settings


class CopyLoraScript(scripts.Script):
    """Always on: makes `<lora:name:w:blocks>` work and applies per-block strengths."""

    def __init__(self):
        super().__init__()
        self.hook = BlockWeightHook()

    def title(self):
        return "CopyLoRA"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        self.hook.process(p)

    def before_process_batch(self, p, *args, **kwargs):
        self.hook.before_process_batch(p, **kwargs)

    def after_extra_networks_activate(self, p, *args, **kwargs):
        self.hook.after_extra_networks_activate(p, **kwargs)


def _on_unload():
    """Reload UI / unload: a running training run stops and saves; every change to the WebUI's objects is undone."""
    service.shutdown()
    undone = patching.undo_all()
    print(f"CopyLoRA: unloaded; undid {len(undone)} change(s) to the WebUI ({', '.join(sorted(set(undone))) or 'none'})")


xyz_axes.register_axes()
script_callbacks.on_script_unloaded(_on_unload)
service = CopyLoraService(WebUIServiceHost())  # shared by the API and the tab: one job queue, one Stop
script_callbacks.on_app_started(lambda _demo, app: register_routes(app, service))
script_callbacks.on_ui_settings(register_settings)
script_callbacks.on_ui_tabs(CopyLoraTab(service).on_ui_tabs)

