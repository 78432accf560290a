"""The hostile-request corpus of issue 10, shared by the service-layer tests (tests/test_api_hostile.py, no WebUI)
and the same requests over HTTP against the real WebUI (tests/webui/test_hostile_api.py).

Each case: (method, path under /copylora/v1, JSON body or raw bytes, status, a regex the one-line detail must
match). The names of the inputs it may refer to come from `Names`, so each side puts them where its folders are.
"""

from __future__ import annotations

from typing import Any, NamedTuple

LONG = "n" * 300


class Names(NamedTuple):
    dataset: str = "a"  # an image set inside the datasets folder
    one: str = "one"  # two LoRAs inside the Lora folder (same family)
    two: str = "two"
    not_a_lora: str = "not_a_lora"  # a .safetensors file inside the Lora folder that is not one
    run: str = "run"  # the output name of the good training request


def ok_train(n: Names) -> dict[str, Any]:
    return {"name": n.run, "dataset_a": n.dataset, "loop": {"max_steps": 2}}


def ok_merge(n: Names) -> dict[str, Any]:
    return {"models": [n.one, n.two], "ratios": [1, -1], "output": f"{n.run}_diff"}


def hostile_corpus(n: Names = Names()) -> list[tuple[str, str, Any, int, str]]:
    OK_TRAIN, OK_MERGE = ok_train(n), ok_merge(n)  # noqa: N806
    return [
        # over-long names: the file system would answer ENAMETOOLONG deep inside
        ("POST", "/train", {**OK_TRAIN, "name": LONG}, 400, r"^name: .*300 bytes is too long"),
        ("POST", "/train", {**OK_TRAIN, "dataset_a": LONG}, 400, r"^dataset_a: .*too long"),
        ("POST", "/train", {**OK_TRAIN, "subfolder": LONG}, 400, r"^subfolder: .*too long"),
        ("POST", "/train", {**OK_TRAIN, "reg_a": f"a/{LONG}"}, 400, r"too long"),
        ("POST", "/merge", {**OK_MERGE, "output": LONG}, 400, r"^output: .*too long"),
        ("POST", "/merge", {**OK_MERGE, "models": [LONG, n.two]}, 400, r"^models\[0\]: .*too long"),
        ("POST", "/datasets/scan", {"dataset": LONG}, 400, r"^dataset: .*too long"),
        ("GET", f"/jobs/{LONG}", None, 404, r"no training job"),
        # control characters and NUL in names
        ("POST", "/train", {**OK_TRAIN, "name": "bad\x00name"}, 400, r"^name: .*U\+0000"),
        ("POST", "/train", {**OK_TRAIN, "name": "bad\x0bname"}, 400, r"^name: .*U\+000B"),
        ("POST", "/merge", {**OK_MERGE, "output": "out\x1fput"}, 400, r"^output: .*U\+001F"),
        ("POST", "/datasets/scan", {"dataset": "a\x07"}, 400, r"^dataset: .*U\+0007"),
        # paths that leave their folder
        ("POST", "/train", {**OK_TRAIN, "dataset_a": "../.."}, 400, r"^dataset_a: .*'\.\.'"),
        ("POST", "/train", {**OK_TRAIN, "subfolder": "/tmp"}, 400, r"^subfolder: .*absolute"),
        ("POST", "/merge", {**OK_MERGE, "output": "../escaped"}, 400, r"^output: .*'\.\.'"),
        ("POST", "/datasets/scan", {"dataset": "/etc"}, 400, r"absolute"),
        # sections and values of the wrong kind
        ("POST", "/train", {**OK_TRAIN, "network": "abc"}, 400, r"^network must be an object of settings, not str"),
        ("POST", "/train", {**OK_TRAIN, "optim": [1, 2]}, 400, r"^optim must be an object of settings, not list"),
        ("POST", "/train", {**OK_TRAIN, "network": {"rank": "abc"}}, 400, r"^network\.rank: 'abc' is not a valid int"),
        ("POST", "/train", {**OK_TRAIN, "network": {"rank": True}}, 400, r"^network\.rank: True"),
        ("POST", "/train", {**OK_TRAIN, "network": {"kind": 5}}, 400, r"^network\.kind: 5 is not a valid choice"),
        ("POST", "/train", {**OK_TRAIN, "network": {"kind": "lorax"}}, 400, r"kind 'lorax' is not one of"),
        ("POST", "/train", {**OK_TRAIN, "optim": {"learning_rate": {"a": 1}}}, 400, r"^optim\.learning_rate: "),
        ("POST", "/train", {**OK_TRAIN, "optim": {"betas": "0.9"}}, 400, r"betas"),
        ("POST", "/train", {**OK_TRAIN, "loop": {"max_steps": 1.5}}, 400, r"^loop\.max_steps: 1\.5"),
        ("POST", "/train", {**OK_TRAIN, "loop": {"seed": "nan"}}, 400, r"^loop\.seed: 'nan'"),
        ("POST", "/train", {**OK_TRAIN, "loop": {"epochs": "inf"}}, 400, r"^loop\.epochs: 'inf'"),
        ("POST", "/train", {**OK_TRAIN, "loop": {"gradient_checkpointing": "maybe"}}, 400, r"gradient_checkpointing"),
        ("POST", "/train", {**OK_TRAIN, "sample": {"prompts": 5}}, 400, r"^sample\.prompts: 5"),
        ("POST", "/train", {**OK_TRAIN, "speed": "fast"}, 400, r"^speed must be an object of settings, not str"),
        ("POST", "/train", {**OK_TRAIN, "speed": {"compile": "fast"}}, 400, r"compile 'fast' is not one of"),
        ("POST", "/train", {**OK_TRAIN, "speed": {"compile": 1}}, 400, r"^speed\.compile: 1"),
        ("POST", "/train", {**OK_TRAIN, "speed": {"read_loss_every": 0}}, 400, r"read_loss_every"),
        ("POST", "/train", {**OK_TRAIN, "speed": {"read_loss_every": "often"}}, 400, r"^speed\.read_loss_every: 'often'"),
        ("POST", "/train", {**OK_TRAIN, "speed": {"fused_lowrank": "maybe"}}, 400, r"fused_lowrank"),
        ("POST", "/train", {**OK_TRAIN, "speed": {"compil": "blocks"}}, 400, r"unknown field compil \(did you mean compile\?\)"),
        ("POST", "/train", {**OK_TRAIN, "speed": {"skip_guards": "sometimes"}}, 400, r"^speed\.skip_guards: 'sometimes'"),
        ("POST", "/train", {**OK_TRAIN, "speed": {"skip_guard": False}}, 400, r"unknown field skip_guard \(did you mean skip_guards\?\)"),
        ("POST", "/train", {**OK_TRAIN, "dataset": {"resolution": [512]}}, 400, r"^dataset\.resolution: \[512\]"),
        ("POST", "/train", {**OK_TRAIN, "dataset": {"caption_extension": {}}}, 400, r"^dataset\.caption_extension"),
        ("POST", "/train", {**OK_TRAIN, "route": "sideways"}, 400, r"route 'sideways' is not one of"),
        ("POST", "/train", {**OK_TRAIN, "route": "copier"}, 400, r"needs dataset_b"),
        ("POST", "/train", {**OK_TRAIN, "new_rank": 4}, 400, r"new_rank"),
        ("POST", "/train", {**OK_TRAIN, "route": "difference", "dataset_b": n.dataset, "new_conv_rank": 4}, 400,
         r"^new_conv_rank needs new_rank"),
        ("POST", "/train", {**OK_TRAIN, "dataset_b": n.dataset}, 400, r"^the single route trains dataset_a alone"),
        ("POST", "/train", {**OK_TRAIN, "reg_b": n.dataset}, 400, r"^the single route trains dataset_a alone"),
        ("POST", "/train", {**OK_TRAIN, "output": {"output_dir": "/tmp"}}, 400, r"set by the server"),
        ("POST", "/train", {**OK_TRAIN, "name": ["x"]}, 400, r"^name: "),
        ("POST", "/train", {**OK_TRAIN, "network": {"rank": "4,,8"}}, 400, r"empty item"),
        ("POST", "/train", {**OK_TRAIN, "network": {"rank": ",".join(map(str, range(1, 1001)))},
                            "optim": {"learning_rate": ",".join(f"{i}e-5" for i in range(1, 1001))}}, 400,
         r"^the sweep makes 1000000 runs \(1000 × 1000\); at most 256"),
        # unknown fields: refused, naming the closest known field (top level, sections, scan settings)
        ("POST", "/train", {**OK_TRAIN, "max_step": 1}, 400, r"^request: unknown field max_step;"),
        ("POST", "/train", {**OK_TRAIN, "netwrok": {}}, 400, r"unknown field netwrok \(did you mean network\?\)"),
        ("POST", "/train", {**OK_TRAIN, "loop": {"max_step": 1}}, 400,
         r"^loop: unknown field max_step \(did you mean max_steps\?\)"),
        ("POST", "/train", {**OK_TRAIN, "optim": {"lr": 1, "learning_rat": 1}}, 400,
         r"^optim: unknown fields learning_rat \(did you mean learning_rate\?\), lr;"),
        ("POST", "/merge", {**OK_MERGE, "ratio": [1]}, 400, r"unknown field ratio \(did you mean ratios\?\)"),
        ("POST", "/merge", {**OK_MERGE, "save_precison": "fp16"}, 400, r"did you mean save_precision\?"),
        ("POST", "/datasets/scan", {"dataset": n.dataset, "settings": {"resolutoin": 64}}, 400,
         r"^dataset: unknown field resolutoin \(did you mean resolution\?\)"),
        ("POST", "/datasets/scan", {"dataset": n.dataset, "setings": {}}, 400, r"did you mean settings\?"),
        ("POST", "/datasets/scan", {"dataset": n.dataset, "settings": {"data_dir": "/"}}, 400, r"data_dir"),
        ("POST", "/jobs/abc/stop", {"saved": True}, 400, r"unknown field saved \(did you mean save\?\)"),
        ("PUT", "/presets/NEW", {"values": [1] * 17, "name": "x"}, 400, r"unknown field name"),
        # scan settings of the wrong type
        ("POST", "/datasets/scan", {"dataset": n.dataset, "settings": {"batch_size": "x"}}, 400,
         r"^dataset\.batch_size: 'x' is not a valid int"),
        ("POST", "/datasets/scan", {"dataset": n.dataset, "settings": {"resolution": {"w": 1}}}, 400,
         r"dataset\.resolution"),
        ("POST", "/datasets/scan", {"dataset": n.dataset, "settings": {"enable_bucket": 7}}, 400, r"enable_bucket"),
        ("POST", "/datasets/scan", {"dataset": n.dataset, "settings": "abc"}, 400, r"^settings: "),
        ("POST", "/datasets/scan", {"dataset": "missing"}, 400, r"does not exist"),
        # merges that cannot run
        ("POST", "/merge", {**OK_MERGE, "ratios": [1]}, 400, r"2 models but 1 ratios"),
        ("POST", "/merge", {**OK_MERGE, "ratios": ["x", 1]}, 400, r"^ratios\.0: "),
        ("POST", "/merge", {**OK_MERGE, "save_precision": "fp8"}, 400, r"save_precision must be one of"),
        ("POST", "/merge", {**OK_MERGE, "models": ["missing", n.two]}, 400, r"no LoRA file missing"),
        ("POST", "/merge", {**OK_MERGE, "models": [n.not_a_lora, n.two]}, 400, r"not_a_lora|header|safetensors"),
        ("POST", "/merge", {**OK_MERGE, "output": n.one}, 400, r"one\.safetensors exists"),
        ("POST", "/merge", {**OK_MERGE, "blocks": ["NOPE", "-"]}, 400, r"NOPE"),
        ("POST", "/merge", {**OK_MERGE, "blocks": ["1,2", "-"]}, 400, r"values|count|17"),
        # presets
        ("PUT", "/presets/NEW", {"values": ["a"] * 17}, 400, r"^values\.0: "),
        ("PUT", "/presets/NEW", {"values": [1, 2]}, 400, r"17|values"),
        ("PUT", "/presets/bad:name", {"values": [1] * 17}, 400, r"name"),
        ("DELETE", "/presets/ABSENT", None, 400, r"ABSENT"),
        # bodies that are not the object a route takes
        ("POST", "/train", b"{not json", 400, r"^the body is not valid JSON"),
        ("POST", "/train", [1, 2], 400, r"^body: "),
        ("POST", "/merge", "text", 400, r"^body: "),
        ("POST", "/train", {"dataset_a": n.dataset}, 400, r"^name: "),
    ]
