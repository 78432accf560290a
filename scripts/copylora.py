"""CopyLoRA's entry script: the composition root. It wires hooks, axes and callbacks; the logic lives in
lib_copylora. The WebUI puts the extension root on sys.path only while it runs this file, so the package is
imported here, at the top."""

from modules import script_callbacks, scripts

from lib_copylora.webui import compat, xyz_axes
from lib_copylora.webui.block_apply import undo_all
from lib_copylora.webui.prompt_hook import BlockWeightHook


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
    xyz_axes.unregister_axes()
    networks = compat.builtin_lora()
    if networks is not None:
        undo_all(networks)


xyz_axes.register_axes()
script_callbacks.on_script_unloaded(_on_unload)
