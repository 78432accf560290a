"""The service layer: what the tab and the HTTP API both call (job queue, train and merge requests, safe paths).

Pure and host-free: nothing here imports `modules` or `gradio`; the WebUI's side (queue lock, `shared.state`, the
loaded model, the built-in Lora list) reaches it through a small host object made in `lib_copylora/webui/`.
See docs/architecture.md.
"""
