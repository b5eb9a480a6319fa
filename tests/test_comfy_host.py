"""The pack in a real ComfyUI: the pinned contract in /object_info, every example workflow run through POST /prompt,
a validation error and Cancel during sampling.

Needs a ComfyUI checkout: ``COMFYUI_DIR=/path/to/ComfyUI`` (and ``COMFYUI_PYTHON``, the interpreter that has its
requirements, when it is not this one). Skipped without it. The server runs on a free 127.0.0.1 port with a
temporary base directory (models, input, output, custom_nodes with this repository linked in) and stops by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "example_workflows"
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set: point it at a ComfyUI checkout "
                                                      "(and COMFYUI_PYTHON at its interpreter) to run the pack in a "
                                                      "real host")
sys.path.insert(0, str(ROOT / "tests" / "nodes"))

from comfy_stub import write_models  # noqa: E402
from node_contract import CONTRACT  # noqa: E402

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
BUILTIN_DEFAULT = ROOT / "comfyui_rad" / "weights" / "rad_default.safetensors"
EXAMPLES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))


# ------------------------------------------------------------------------------------------------------ server


class Server:
    def __init__(self, url: str, base: Path, log: Path, pid: int | None = None):
        self.url, self.base, self.log, self.pid = url, base, log, pid

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                text = r.read()
                return r.status, json.loads(text) if text else {}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def queue(self, prompt: dict) -> str:
        status, answer = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        assert status == 200, json.dumps(answer)[:3000]
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and (entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s; log: {self.log}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _authors_stand_in(target: Path, work: Path) -> None:
    """The authors' FFHQ model is not redistributable here: a tiny model in their exact format, at their 256x256,
    converted by rad-convert under the file name the example workflow picks, so the example runs for real."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _authors import FFHQ_LIKE, write_checkpoint

    from comfyui_rad.convert import convert

    convert(write_checkpoint(work / "checkpoint-300000", {**FFHQ_LIKE, "sample_size": 256}), target)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-rad").symlink_to(ROOT, target_is_directory=True)
    write_models(base / "models" / "rad")
    _authors_stand_in(base / "models" / "rad" / "rad_ffhq256.safetensors", tmp_path_factory.mktemp("authors"))
    if not BUILTIN_DEFAULT.exists():  # until the trainer ships it: the tiny model under the default's name
        shutil.copyfile(base / "models" / "rad" / "tiny.safetensors", base / "models" / "rad" / BUILTIN_DEFAULT.name)
    extra = base / "elsewhere"
    extra.mkdir()
    shutil.copyfile(base / "models" / "rad" / "tiny.safetensors", extra / "from_extra_paths.safetensors")
    (base / "extra_model_paths.yaml").write_text(f"mine:\n    rad: {extra}\n")
    port, log = _free_port(), base / "comfyui.log"
    command = [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1",
               "--port", str(port), "--disable-auto-launch", "--base-directory", str(base),
               "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
               "--database-url", f"sqlite:///{base / 'comfyui.db'}"]
    with open(log, "wb") as out:
        # one thread unless told otherwise: on a few shared cores, torch's thread pool makes each call ~10x slower
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        process = subprocess.Popen(command, cwd=COMFYUI_DIR, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited ({process.returncode}):\n{log.read_text()[-4000:]}")
            try:
                urllib.request.urlopen(url + "/system_stats", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"ComfyUI did not answer in 120 s:\n{log.read_text()[-4000:]}")
        yield Server(url, base, log, process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --------------------------------------------------------------------------------------------------- contract


def contract_from_object_info(info: dict) -> dict:
    """The same view of a node as ``comfy_stub.describe``, read from the host's /object_info."""
    inputs, widgets = [], []
    for name in info["input_order"].get("required", []) + info["input_order"].get("optional", []):
        spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}[name]
        kind = "COMBO" if isinstance(spec[0], list) else spec[0]
        inputs.append((name, kind))
        if kind in WIDGET_TYPES:
            widgets.append(name)
            if len(spec) > 1 and spec[1].get("control_after_generate"):
                widgets.append("control_after_generate")
    return {"category": info["category"], "inputs": inputs, "outputs": list(zip(info["output_name"], info["output"])),
            "widgets": widgets}


def test_pack_imports_and_matches_the_pinned_contract(server):
    log = server.log.read_text()
    assert "comfyui-rad" in log and not [line for line in log.splitlines()
                                         if "IMPORT FAILED" in line and "comfyui-rad" in line]
    info = server.get("/object_info")
    for node_id, contract in CONTRACT.items():
        assert contract_from_object_info(info[node_id]) == contract, node_id
        assert len(info[node_id]["description"]) > 40
        for spec in {**info[node_id]["input"]["required"], **info[node_id]["input"].get("optional", {})}.values():
            assert spec[1].get("tooltip")


def test_loader_lists_models_rad_extra_paths_and_the_default(server):
    spec = server.get("/object_info/RADModelLoader")["RADModelLoader"]["input"]["required"]["base_model"]
    assert {"tiny.safetensors", "from_extra_paths.safetensors", "rad_default.safetensors"} <= set(spec[1]["options"])
    assert spec[1]["default"] == "rad_default.safetensors"


# -------------------------------------------------------------------------------------------------- workflows


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """A UI-format workflow as the browser sends it to POST /prompt: widget values by position, links by input."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] not in object_info or node.get("mode", 0) in (2, 4):  # notes; muted or bypassed nodes
            continue
        info, values, inputs = object_info[node["type"]], list(node.get("widgets_values") or []), {}
        for name in info["input_order"].get("required", []) + info["input_order"].get("optional", []):
            spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}[name]
            if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES:
                inputs[name] = values.pop(0)
                if len(spec) > 1 and spec[1].get("control_after_generate"):
                    values.pop(0)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def _api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", EXAMPLES)
def test_ui_format_converts_to_its_api_twin(server, name):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    twin = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in _api(name).items()}
    assert ui_to_api(ui, server.get("/object_info")) == twin


def _picture(path: Path) -> np.ndarray:
    """As LoadImage reads it and SaveImage writes it back: uint8 RGB."""
    pixels = np.array(Image.open(path).convert("RGB")).astype(np.float32) / 255.0
    return np.clip(255.0 * pixels, 0, 255).astype(np.uint8)


def _painted(name: str) -> np.ndarray:
    """LoadImage's mask of an example input (1 - alpha), or the white of a mask file."""
    picture = Image.open(WORKFLOWS / "input" / name)
    if picture.mode == "RGBA":
        return 1 - np.asarray(picture)[..., 3] / 255.0
    return np.asarray(picture.convert("L")) / 255.0


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    m = torch.from_numpy(mask).float()[None, None]
    return torch.nn.functional.max_pool2d(m, 2 * pixels + 1, 1, pixels)[0, 0].numpy()


def _keep(name: str, prompt: dict) -> np.ndarray:
    """Pixels no mask of the example can touch (a margin beyond GrowMask), [H,W] bool."""
    nodes = {n["class_type"]: n["inputs"] for n in prompt.values()}
    if "RADPerlinMask" in nodes:
        from comfyui_rad.masks import perlin_mask

        p = nodes["RADPerlinMask"]
        mask = perlin_mask(p["batch_size"], p["height"], p["width"],
                           generator=torch.Generator().manual_seed(p["seed"]),
                           cell_size=(p["cell_size_min"], p["cell_size_max"]), octaves=p["octaves"],
                           coverage=p["coverage"], softness=p["softness"], invert=p["invert"]).amax(0).numpy()
    else:
        source = nodes.get("LoadImageMask", nodes["LoadImage"])["image"]
        mask = _painted(source)
    return _grow(mask, 12) == 0


def _outpainted(before: np.ndarray, pad: dict) -> tuple[np.ndarray, np.ndarray]:
    """ImagePadForOutpaint's canvas (new pixels 0) and the pixels it keeps: the original picture less its
    feathered band along the extended sides (and a margin)."""
    left, top, right, bottom, feather = (pad[k] for k in ("left", "top", "right", "bottom", "feathering"))
    height, width = before.shape[:2]
    canvas = np.pad(before, ((top, bottom), (left, right), (0, 0)))
    keep = np.zeros(canvas.shape[:2], dtype=bool)
    band = feather + 12
    keep[top + (band if top else 0):top + height - (band if bottom else 0),
         left + (band if left else 0):left + width - (band if right else 0)] = True
    return canvas, keep


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_as_shipped(server, name):
    prompt = _api(name)
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    source = next(n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage")
    before = _picture(server.base / "input" / source)
    pad = next((n["inputs"] for n in prompt.values() if n["class_type"] == "ImagePadForOutpaint"), None)
    before, keep = _outpainted(before, pad) if pad else (before, _keep(name, prompt))
    saved = [image for node, out in entry["outputs"].items() if prompt[node]["class_type"] == "SaveImage"
             for image in out["images"]]
    assert saved
    for image in saved:
        after = np.asarray(Image.open(server.base / "output" / image["subfolder"] / image["filename"]).convert("RGB"))
        assert after.shape == before.shape, image["filename"]
        assert np.array_equal(after[keep], before[keep]), image["filename"]
        assert not np.array_equal(after, before), f"{image['filename']}: nothing was inpainted"


# -------------------------------------------------------------------------------------------- errors, cancel


def test_a_missing_model_is_refused_before_running_with_the_folders_searched(server):
    prompt = _api("rad_basic_inpaint")
    loader = next(k for k, v in prompt.items() if v["class_type"] == "RADModelLoader")
    prompt[loader]["inputs"]["base_model"] = "not_there.safetensors"
    status, answer = server.post("/prompt", {"prompt": prompt, "client_id": "test"})
    assert status == 400
    errors = answer["node_errors"][loader]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    details = errors[0]["details"]
    assert "not_there.safetensors" in details and str(server.base / "models" / "rad") in details


def test_an_empty_loadimage_mask_is_explained(server):
    prompt = _api("rad_basic_inpaint")
    image = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
    prompt[image]["inputs"]["image"] = "rad_example_large.jpg"  # no alpha: LoadImage's 64x64 empty mask
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_type"] == "RADSpatialSchedule" and "MaskEditor" in error["exception_message"]


def test_cancel_during_sampling_stops_it_and_the_next_prompt_runs(server):
    prompt = _api("rad_basic_inpaint")
    schedule = next(k for k, v in prompt.items() if v["class_type"] == "RADSpatialSchedule")
    prompt[schedule]["inputs"]["steps"] = 1000  # long enough to be cancelled while sampling
    prompt_id = server.queue(prompt)
    end = time.time() + 120
    while not server.get("/queue")["queue_running"] and time.time() < end:
        time.sleep(0.1)
    time.sleep(3)  # model loaded, a few steps done
    assert server.get("/queue")["queue_running"], "the prompt finished before it could be cancelled"
    pressed = time.time()
    server.post("/interrupt")
    entry = server.wait(prompt_id, timeout=60)
    stopped = time.time() - pressed
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" and m[1]["node_type"] == "RADSampler"
               for m in entry["status"]["messages"])
    assert stopped < 15, f"took {stopped:.1f} s to stop"
    prompt[schedule]["inputs"]["steps"] = 3
    assert server.wait(server.queue(prompt))["status"]["status_str"] == "success"
