"""Run by the WebUI's launcher at start-up: installs what CopyLoRA needs and the WebUI does not already pin.

Idempotent and quick: it checks by import name and does nothing when everything is there. torch, safetensors,
numpy and gradio come with the WebUI and are never touched here."""

import launch

NEEDED = {
    # import name: pip requirement
    "lycoris": "lycoris-lora>=3.0",
}

for import_name, requirement in NEEDED.items():
    if not launch.is_installed(import_name):
        launch.run_pip(f'install "{requirement}"', f"{requirement} for CopyLoRA")
