"""The CopyLoRA tab (gradio). Pure parts (`fields`, `train_form`, `train_presets`, `loss_plot`, `merge_form`,
`block_form`, `uploads`) turn widget values into the engine's request objects and import neither gradio nor the
WebUI; the panels (`train_panel`, `merge_panel`, `blocks_panel`, `tab`) build and wire the widgets."""
