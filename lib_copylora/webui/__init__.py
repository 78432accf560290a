"""The only package that imports the WebUI (`modules`): host adapter, prompt hook, X/Y/Z axes, patch points."""
