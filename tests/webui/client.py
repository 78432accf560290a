"""A small client for a running WebUI: the HTTP API the way users' scripts call it, on the standard library."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from .server import WebuiServer

XYZ_SCRIPT = "x/y/z plot"
DEFAULT_SAMPLER = "Euler"  # deterministic, no ancestral noise: same seed, same bits


class WebuiHttpError(RuntimeError):
    """The WebUI answered with an HTTP error; the message carries its body (FastAPI puts the reason there)."""


class ServerFolders(NamedTuple):
    loras: Path  # --lora-dir: where the built-in Lora extension lists networks and CopyLoRA writes results
    datasets: Path  # CopyLoRA's image sets: <--copylora-dir or <data dir>/copylora>/datasets


class Txt2ImgResult(NamedTuple):
    image: np.ndarray  # H × W × 3, uint8, decoded from the PNG the API returns
    infotext: str  # the generation parameters as the WebUI writes them under the image


class WebuiClient:
    def __init__(self, base_url: str, timeout: float = 900.0, server: WebuiServer | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.server = server  # set when this test run started the server itself; None for COPYLORA_WEBUI_URL

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:2000]
            raise WebuiHttpError(f"{method} {path} -> HTTP {error.code}: {detail}") from error
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    def txt2img(self, prompt: str, seed: int, steps: int = 2, size: int = 64, **extra: Any) -> Txt2ImgResult:
        """One image with a fixed seed; `extra` goes into the request as is (negative_prompt, script_name, ...)."""
        body = {"prompt": prompt, "seed": seed, "steps": steps, "width": size, "height": size,
                "sampler_name": DEFAULT_SAMPLER, "batch_size": 1, "n_iter": 1, **extra}
        answer = self.post("/sdapi/v1/txt2img", body)
        return Txt2ImgResult(decode_image(answer["images"][0]), json.loads(answer["info"])["infotexts"][0])

    def script_args(self, script_name: str, img2img: bool = False) -> list[dict]:
        """The argument list (label, choices, ...) of one script as /sdapi/v1/script-info describes it."""
        for script in self.get("/sdapi/v1/script-info"):
            if script["name"] == script_name.lower() and script["is_img2img"] == img2img:
                return script["args"]
        raise KeyError(f"no {'img2img' if img2img else 'txt2img'} script named {script_name!r}")

    def xyz_axis_index(self, label: str, img2img: bool = False) -> int:
        """The number the X/Y/Z plot script expects for the axis called `label` (the same for X, Y and Z)."""
        axis_types = next(arg for arg in self.script_args(XYZ_SCRIPT, img2img) if arg["label"] == "X type")
        choices = axis_types["choices"]
        if label not in choices:
            raise KeyError(f"X/Y/Z plot has no axis {label!r}; it has {choices}")
        return choices.index(label)

    def xyz_cells(self, prompt: str, seed: int, axis: str, values: str = "", dropdown=None,
                  csv_mode: bool = True) -> tuple[list[np.ndarray], list[str]]:
        """A one-axis X/Y/Z plot of 64×64, 2-step Euler images: (cell images, cell infotexts), the grid left out."""
        args = [self.xyz_axis_index(axis), values, dropdown or [], 0, "", [], 0, "", [],
                True, True, False, False, False, False, False, 0, csv_mode]
        answer = self.post("/sdapi/v1/txt2img", {
            "prompt": prompt, "seed": seed, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
            "script_name": XYZ_SCRIPT, "script_args": args})
        infotexts = json.loads(answer["info"])["infotexts"]
        return [decode_image(x) for x in answer["images"][1:]], infotexts[1:]

    def sysinfo(self) -> dict:
        """The WebUI's own report: active extensions, recorded exceptions, startup timings (needs the UI)."""
        return self.get("/internal/sysinfo")

    def loaded_checkpoint(self) -> dict:
        """The /sdapi/v1/sd-models entry of the checkpoint in use. Titles gain " [hash]" once the WebUI hashed
        the file (Forge does that at the first generation), so either form of the title matches."""
        title = self.get("/sdapi/v1/options")["sd_model_checkpoint"]
        for model in self.get("/sdapi/v1/sd-models"):
            if _unhashed(model["title"]) == _unhashed(title):
                return model
        raise KeyError(f"the checkpoint in use, {title!r}, is not in /sdapi/v1/sd-models")

    def folders(self) -> ServerFolders:
        """The running server's Lora and CopyLoRA datasets folders. For a server this run started they come from
        its command line; otherwise from /sdapi/v1/cmd-flags, which Forge answers with HTTP 500 whenever it was
        started with --port (its response model wants the port as a string)."""
        if self.server is not None:
            config = self.server.config
            return ServerFolders(config.lora_dir, config.data_dir / "copylora" / "datasets")
        flags = self.get("/sdapi/v1/cmd-flags")
        root = Path(flags.get("copylora_dir") or Path(flags["data_dir"]) / "copylora")
        return ServerFolders(Path(flags["lora_dir"]), root / "datasets")

    def restart(self) -> None:
        """Stop the server process and start it again; only for a server this test run started."""
        if self.server is None:
            raise RuntimeError("this WebUI was started by someone else (COPYLORA_WEBUI_URL); it cannot be restarted")
        self.base_url = self.server.restart()  # a fresh process gets a fresh free port


def _unhashed(title: str) -> str:
    return title.split(" [", 1)[0]


def decode_image(encoded: str) -> np.ndarray:
    from PIL import Image  # only the tier needs Pillow

    if "," in encoded[:64]:  # a data URL prefix, as some WebUI versions send
        encoded = encoded.split(",", 1)[1]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.uint8).copy()
