"""Pure LoRA math and file formats. Never imports the WebUI (`modules`) or gradio."""
