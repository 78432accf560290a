"""Reading the WebUI's own reports for errors that pass through our extension's files."""

from __future__ import annotations

import re

# The WebUI's log format (modules/logging_config.py, the same in Forge): "<date> <time> LEVEL [logger] message".
OUR_LOGGER_ERROR = re.compile(r" (ERROR|CRITICAL) \[copylora(\.[\w.]+)?\] ")
PYTHON_WARNING = re.compile(r"\.py:\d+: \w*Warning: ")  # warnings.showwarning's "path:line: Category: message"
ATTENTION_APPLIED = re.compile(r"Applying attention optimization: (\S+)\.\.\. done\.")  # A1111's sd_hijack


def attention_kernels_applied(log_text: str) -> list[str]:
    """The cross-attention kernels A1111 applied, in order, by name (`sdp`, `InvokeAI`, ...)."""
    return ATTENTION_APPLIED.findall(log_text)


def extension_errors_in_log(log_text: str, roots: list[str], script_names: list[str]) -> list[str]:
    """Log lines that put an error in our extension: a traceback frame in our files, or a script load failure.

    Only frames and load failures count: a path of ours in an ordinary message (a DEBUG line from git, our
    own notice of a preset file) is no error.
    """
    problems = []
    for line in log_text.splitlines():
        text = line.strip()
        if text.startswith('File "') and any(root in text for root in roots):
            problems.append(line)
        elif text.startswith("***") and any(f"Error loading script: {name}" in text for name in script_names):
            problems.append(line)
    return problems


def extension_problems_in_log(log_text: str, roots: list[str], script_names: list[str]) -> list[str]:
    """Everything of ours a clean session should never print: traceback frames in our files and script load
    failures (above), ERROR or CRITICAL records of our `copylora` logger, and Python warnings raised in our files.
    Our WARNING records are not counted: they are messages to the user about their input."""
    problems = extension_errors_in_log(log_text, roots, script_names)
    for line in log_text.splitlines():
        text = line.strip()
        if OUR_LOGGER_ERROR.search(text):
            problems.append(line)
        elif PYTHON_WARNING.search(text) and any(text.startswith(root) for root in roots):
            problems.append(line)
    return problems


def extension_roots(sysinfo: dict, extension_name: str, repo_root: str) -> list[str]:
    """Paths by which the WebUI may name our files: the link it loaded (from its sysinfo), and the checkout behind
    it."""
    return [e["path"] for e in sysinfo["Extensions"] if extension_name in e["name"].lower()] + [repo_root]


def extension_exceptions(sysinfo: dict, roots: list[str]) -> list[dict]:
    """Exceptions the WebUI recorded (sysinfo "Exceptions") whose traceback passes through our files."""
    return [e for e in sysinfo["Exceptions"] if any(root in frame[0] for frame in e["traceback"] for root in roots)]
