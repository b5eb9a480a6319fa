"""Build the example workflows with ComfyUI's own frontend, run them, and take their pictures.

A maintainer's tool, not part of the pack. With a ComfyUI (with this pack in custom_nodes/) running at --server and
headless Chromium, for each example in ``EXAMPLES``: the frontend creates the nodes, sets widgets by name and links
them, then saves the graph as creators do (``NAME.json``, UI format) and as the browser sends it (``api/NAME.json``,
``graphToPrompt``). ``--run`` then queues each example from the page, waits, writes the thumbnail ``NAME.jpg``
(input | result), the README's node pictures (``DOC_PICTURES``) and a screenshot of the graph after the run
(``docs/graph_NAME.png``, for ``SCREENSHOTS``).

    python example_workflows/build.py --server http://127.0.0.1:8188 --run

Needs ``aiohttp`` (ComfyUI's environment has it). Only talks to the given local server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("build")
HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"

WEIGHTS_NOTE = (
    "Weights: rad_default.safetensors ships with comfyui-rad (built in, small): nothing to download.\n\n"
    "For 256x256 photos: put guided-diffusion's 256x256_diffusion_uncond.pt "
    "(github.com/openai/guided-diffusion) and a RAD adapter made for it by rad-train into ComfyUI/models/rad, "
    "then pick them as base_model and adapter."
)
LOADER = {"type": "RADModelLoader", "pos": [40, 40], "size": [320, 170],
          "widgets": {"base_model": "rad_default.safetensors", "adapter": "none", "strength": 1.0, "dtype": "auto"}}
NOTE = {"type": "Note", "pos": [40, 250], "size": [320, 200], "widgets": {"text": WEIGHTS_NOTE}}
AUTHORS_MODEL = "rad_ffhq256.safetensors"
AUTHORS_NOTE = (
    "Weights: the RAD authors' FFHQ model (their checkpoint-N folder, trained 300K steps on the 93 M FFHQ ADM), "
    f"converted once with\n  rad-convert checkpoint-300000/ -o {AUTHORS_MODEL}\nand put into ComfyUI/models/rad "
    "(or copy the checkpoint-N folder itself there). Faces at 256x256: load a face photo instead of the cat. "
    "The sampler runs 100 DDPM steps as the authors did."
)
EXTERNAL_MODELS = {"rad_authors_ffhq256": AUTHORS_MODEL}
"""Examples whose model does not ship with the pack: the file the loader picks (README: where it comes from)."""
COLUMNS = (40, 400, 760, 1120, 1480)
IMAGE_NODE = [320, 380]


def at(column: int, y: int) -> list[int]:
    return [COLUMNS[column], y]


def load_image(name: str, y: int = 40) -> dict:
    return {"type": "LoadImage", "pos": at(1, y), "size": IMAGE_NODE, "widgets": {"image": name}}


STEPS = 15
"""The schedule's steps in the examples on the built-in model: the default sampler's (``settings.SAMPLER_DEFAULTS``:
DPM++ 2M SDE, 15 steps in log-SNR); the samplers' steps are 0 (the schedule's), so the schedule's widget sets them."""


def schedule(y: int, mask: tuple, mode: str = "binary", steps: int = STEPS) -> dict:
    return {"type": "RADSpatialSchedule", "pos": at(2, y), "size": [320, 420], "inputs": {"mask": mask},
            "widgets": {"mask_mode": mode, "threshold": 0.5, "steps": steps}}


def sampler(y: int, schedule_key: str, name: str = "dpmpp_2m_sde", fit: str = "crop", image: str = "image",
            start: str = "auto") -> dict:
    """The RAD Sampler as the examples use it: the pack's default sampler at eta 1 (the node's default; eta 0 keeps
    the model's error, docs/EXPERIMENTS.md), steps 0 (the schedule's), start auto (the start the model file
    recommends: the built-in model's harmonic fill, docs/EXPERIMENTS.md), spacing auto (the sampler's own)."""
    return {"type": "RADSampler", "pos": at(3, y), "size": [320, 420],
            "inputs": {"rad_model": ("loader", 0), "image": (image, 0), "schedule": (schedule_key, 0)},
            "widgets": {"seed": 0, "control_after_generate": "fixed", "steps": 0, "sampler": name, "eta": 1.0,
                        "fit": fit, "class_label": -1, "resample": 0, "jump": 10, "start": start,
                        "start_strength": 0.5, "spacing": "auto"}}


def save(y: int, prefix: str, source: str) -> dict:
    return {"type": "SaveImage", "pos": at(4, y), "size": IMAGE_NODE, "widgets": {"filename_prefix": prefix},
            "inputs": {"images": (source, 0)}}


# Each example: nodes by key; "inputs" maps an input name to (source key, output slot).
EXAMPLES = {
    "rad_basic_inpaint": {
        "loader": LOADER, "note": NOTE,
        "image": load_image("rad_example_cat.png"),
        "schedule": schedule(40, ("image", 1)),
        "sampler": sampler(40, "schedule"),
        "save": save(40, "rad_basic", "sampler"),
    },
    "rad_perlin_masks": {
        "loader": LOADER, "note": NOTE,
        "image": load_image("rad_example_cat.png"),
        "perlin": {"type": "RADPerlinMask", "pos": at(1, 470),
                   "widgets": {"width": 451, "height": 300, "batch_size": 4, "seed": 3,
                               "control_after_generate": "randomize", "cell_size_min": 24.0,
                               "cell_size_max": 80.0, "octaves": 1, "coverage": 0.3, "softness": 0.0,
                               "invert": False}},
        "schedule": schedule(40, ("perlin", 0)),
        "sampler": sampler(40, "schedule", fit="pad"),
        "masks": {"type": "MaskToImage", "pos": at(2, 500), "inputs": {"mask": ("perlin", 0)}},
        "show_masks": {"type": "PreviewImage", "pos": at(2, 580), "size": [320, 300],
                       "inputs": {"images": ("masks", 0)}},
        "save": save(40, "rad_perlin", "sampler"),
    },
    "rad_soft_mask_strength": {
        "loader": LOADER, "note": NOTE,
        "image": load_image("rad_example_cat.png"),
        "strength": {"type": "SolidMask", "pos": at(1, 470), "widgets": {"value": 0.5, "width": 451, "height": 300}},
        "soft": {"type": "MaskComposite", "pos": at(1, 620), "widgets": {"x": 0, "y": 0, "operation": "multiply"},
                 "inputs": {"destination": ("strength", 0), "source": ("image", 1)}},
        "schedule_full": schedule(40, ("image", 1)),
        "schedule_soft": schedule(500, ("soft", 0), mode="soft"),
        # start noise: the mask's value alone says how much is regenerated (a start from a fill would scale the
        # 0.5 down to the model's recommended strength, and the picture would show the fill, not the soft mask)
        "sampler_full": sampler(40, "schedule_full", start="noise"),
        "sampler_soft": sampler(500, "schedule_soft", start="noise"),
        "save_full": save(40, "rad_soft_1.0", "sampler_full"),
        "save_soft": save(500, "rad_soft_0.5", "sampler_soft"),
    },
    "rad_large_photo_crop": {
        "loader": LOADER, "note": NOTE,
        "image": load_image("rad_example_large.jpg"),
        "mask": {"type": "LoadImageMask", "pos": at(1, 470), "size": IMAGE_NODE,
                 "widgets": {"image": "rad_example_large_mask.png", "channel": "red"}},
        "schedule": schedule(40, ("mask", 0)),
        "sampler": sampler(40, "schedule", fit="crop"),
        "save": save(40, "rad_large", "sampler"),
    },
    "rad_authors_ffhq256": {
        "loader": {**LOADER, "widgets": {**LOADER["widgets"], "base_model": AUTHORS_MODEL}},
        "note": {**NOTE, "widgets": {"text": AUTHORS_NOTE}},
        "image": load_image("rad_example_cat.png"),
        "schedule": schedule(40, ("image", 1), steps=100),
        "sampler": sampler(40, "schedule", "ddpm", start="noise"),  # as the authors ran it (eta: ddpm has none)
        "save": save(40, "rad_authors_ffhq256", "sampler"),
    },
    "rad_large_hole_tiles": {
        "loader": LOADER, "note": NOTE,
        "image": load_image("rad_example_large.jpg"),
        "mask": {"type": "LoadImageMask", "pos": at(1, 470), "size": IMAGE_NODE,
                 "widgets": {"image": "rad_example_large_hole.png", "channel": "red"}},
        "schedule": schedule(40, ("mask", 0)),
        "sampler": sampler(40, "schedule", fit="tiles"),
        "save": save(40, "rad_large_hole", "sampler"),
    },
    "rad_outpaint": {
        "loader": LOADER, "note": NOTE,
        "image": load_image("rad_example_cat.png"),
        "pad": {"type": "ImagePadForOutpaint", "pos": at(1, 470),
                "widgets": {"left": 0, "top": 0, "right": 128, "bottom": 0, "feathering": 24},
                "inputs": {"image": ("image", 0)}},
        "schedule": schedule(40, ("pad", 1), mode="soft"),
        "sampler": sampler(40, "schedule", image="pad"),
        "save": save(40, "rad_outpaint", "sampler"),
    },
    "rad_core_mask_nodes": {
        "loader": LOADER, "note": NOTE,
        "image": load_image("rad_example_cat.png"),
        "threshold": {"type": "ThresholdMask", "pos": at(1, 470), "widgets": {"value": 0.5},
                      "inputs": {"mask": ("image", 1)}},
        "grow": {"type": "GrowMask", "pos": at(1, 580), "widgets": {"expand": 8, "tapered_corners": True},
                 "inputs": {"mask": ("threshold", 0)}},
        "schedule": schedule(40, ("grow", 0)),
        "sampler": sampler(40, "schedule"),
        "composite": {"type": "ImageCompositeMasked", "pos": at(3, 500),
                      "widgets": {"x": 0, "y": 0, "resize_source": False},
                      "inputs": {"destination": ("image", 0), "source": ("sampler", 0), "mask": ("grow", 0)}},
        "save": save(40, "rad_core_masks", "composite"),
    },
}

# Pictures for the README: (example, node key) -> docs/ file, from the node's on-graph preview.
DOC_PICTURES = {
    ("rad_perlin_masks", "show_masks"): "node_perlin_mask.png",
    ("rad_basic_inpaint", "schedule"): "node_schedule_binary.png",
    ("rad_soft_mask_strength", "schedule_soft"): "node_schedule_soft.png",
}

SCREENSHOTS = {"rad_basic_inpaint"}  # docs/graph_NAME.png: the graph after a run, for the README

# The page side: build a graph from a spec with the frontend's own node classes; save it both ways.
BUILD_JS = """
async (spec) => {
  const app = window.app;
  app.graph.clear();
  const made = {};
  for (const [key, n] of Object.entries(spec)) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error(`unknown node type ${n.type}`);
    app.graph.add(node);
    node.pos = n.pos;
    for (const [name, value] of Object.entries(n.widgets || {})) {
      const w = (node.widgets || []).find((w) => w.name === name);
      if (!w) throw new Error(`${n.type} has no widget ${name}: ${(node.widgets || []).map((w) => w.name)}`);
      w.value = value;
      w.callback?.(value);
    }
    if (n.size) node.size = n.size;
    made[key] = node;
  }
  for (const [key, n] of Object.entries(spec)) {
    for (const [name, [source, slot]] of Object.entries(n.inputs || {})) {
      const target = made[key];
      const index = target.inputs.findIndex((i) => i.name === name);
      if (index < 0) throw new Error(`${n.type} has no input ${name}`);
      made[source].connect(slot, target, index);
    }
  }
  app.graph.setDirtyCanvas(true, true);
  const prompt = await app.graphToPrompt();
  const ids = Object.fromEntries(Object.entries(made).map(([key, node]) => [key, String(node.id)]));
  return {ui: app.graph.serialize(), api: prompt.output, ids};
}
"""

class Page:
    """A headless Chromium tab driven over the DevTools protocol."""

    def __init__(self, session, ws):
        self.session, self.ws, self.next_id = session, ws, 0

    async def call(self, method, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression, *args):
        text = f"({expression})({', '.join(json.dumps(a) for a in args)})" if args else expression
        result = await self.call("Runtime.evaluate", expression=text, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")

    async def screenshot(self, path: Path):
        data = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _open_page(aiohttp, session, chromium: str, profile: str, width: int, height: int):
    port = _free_port()
    browser = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                                f"--window-size={width},{height}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
                tabs = [t for t in await r.json() if t["type"] == "page"]
                if tabs:
                    break
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    else:
        raise RuntimeError("Chromium did not start")
    ws = await session.ws_connect(tabs[0]["webSocketDebuggerUrl"], max_msg_size=0)
    return browser, Page(session, ws)


async def _wait_for_app(page: Page, server: str):
    await page.call("Page.enable")
    await page.call("Page.navigate", url=server)
    for _ in range(300):
        ready = await page.evaluate("(() => !!(window.app && window.app.graph && window.LiteGraph "
                                    "&& LiteGraph.registered_node_types['RADSampler']))()")
        if ready:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the ComfyUI frontend did not load")


async def _run(session, server: str, saved: dict, client_id: str) -> dict:
    """Queue the API prompt for the page's client (its nodes then show their outputs) and wait for it."""
    body = {"prompt": saved["api"], "client_id": client_id, "extra_data": {"extra_pnginfo": {"workflow": saved["ui"]}}}
    async with session.post(f"{server}/prompt", json=body) as r:
        answer = await r.json()
        if r.status != 200:
            raise RuntimeError(f"/prompt refused the workflow: {json.dumps(answer)[:2000]}")
    prompt_id = answer["prompt_id"]
    for _ in range(3000):
        async with session.get(f"{server}/history/{prompt_id}") as r:
            entry = (await r.json()).get(prompt_id)
        if entry and entry["status"].get("completed"):
            return entry
        if entry and entry["status"].get("status_str") == "error":
            raise RuntimeError(f"the workflow failed: {json.dumps(entry['status'])[:2000]}")
        await asyncio.sleep(0.2)
    raise RuntimeError("the workflow did not finish in 10 minutes")


def _thumbnail(before: Path, after: Path, target: Path) -> None:
    from PIL import Image

    a, b = Image.open(before).convert("RGB"), Image.open(after).convert("RGB")
    height = 256
    a = a.resize((round(a.width * height / a.height), height), Image.LANCZOS)
    b = b.resize((round(b.width * height / b.height), height), Image.LANCZOS)
    sheet = Image.new("RGB", (a.width + b.width + 8, height), (255, 255, 255))
    sheet.paste(a, (0, 0))
    sheet.paste(b, (a.width + 8, 0))
    buffer = io.BytesIO()
    sheet.save(buffer, "JPEG", quality=88)
    target.write_bytes(buffer.getvalue())


async def build(server: str, chromium: str, run: bool, input_dir: Path | None, output_dir: Path | None,
                names: list[str]) -> None:
    import aiohttp

    profile = tempfile.mkdtemp(prefix="rad-build-chromium-")
    async with aiohttp.ClientSession() as session:
        for key, value in (("Comfy.TutorialCompleted", True), ("Comfy.Workflow.ShowMissingModelsWarning", False)):
            await session.post(f"{server}/api/settings/{key}", data=json.dumps(value))
        browser, page = await _open_page(aiohttp, session, chromium, profile, 1840, 1000)
        try:
            await page.call("Emulation.setDeviceMetricsOverride", width=1840, height=1000, deviceScaleFactor=1,
                            mobile=False)
            (HERE / "api").mkdir(exist_ok=True)
            for name in names:
                await _wait_for_app(page, server)  # a fresh page: no outputs left from the last example
                saved = await page.evaluate(BUILD_JS, EXAMPLES[name])
                saved["ui"]["extra"] = {"ds": {"scale": 0.85, "offset": [20, 10]}}
                (HERE / f"{name}.json").write_text(json.dumps(saved["ui"], indent=2) + "\n")
                (HERE / "api" / f"{name}.json").write_text(json.dumps(saved["api"], indent=2) + "\n")
                log.info("wrote %s.json and api/%s.json", name, name)
                if not run:
                    continue
                await page.evaluate("(() => { const c = window.app.canvas; c.ds.scale = 0.85; "
                                    "c.ds.offset = [20, 10]; c.setDirty(true, true); })()")
                started = time.time()
                client_id = await page.evaluate("(() => window.app.api.clientId)()")
                entry = await _run(session, server, saved, client_id)
                for (example, key), picture in DOC_PICTURES.items():
                    if example == name:
                        image = entry["outputs"][saved["ids"][key]]["images"][0]
                        async with session.get(f"{server}/view", params=image) as r:
                            (DOCS / picture).write_bytes(await r.read())
                log.info("ran %s in %.1f s", name, time.time() - started)
                if name in SCREENSHOTS:
                    await asyncio.sleep(1.5)  # let the previews draw
                    await page.screenshot(DOCS / f"graph_{name}.png")
                if input_dir and output_dir:
                    loads = [n for n in EXAMPLES[name].values() if n["type"] == "LoadImage"]
                    saves = [n for n in EXAMPLES[name].values() if n["type"] == "SaveImage"]
                    prefix = saves[-1]["widgets"]["filename_prefix"]
                    result = max(output_dir.glob(f"{prefix}_*.png"), key=os.path.getmtime)
                    _thumbnail(input_dir / loads[0]["widgets"]["image"], result, HERE / f"{name}.jpg")
        finally:
            browser.terminate()
            browser.wait(10)
            shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:8188", help="a running ComfyUI with this pack")
    p.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    p.add_argument("--run", action="store_true", help="also run each example: thumbnails and screenshots")
    p.add_argument("--input-dir", type=Path, help="the server's input folder (for thumbnails)")
    p.add_argument("--output-dir", type=Path, help="the server's output folder (for thumbnails)")
    p.add_argument("names", nargs="*", default=list(EXAMPLES))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    asyncio.run(build(args.server.rstrip("/"), args.chromium, args.run, args.input_dir, args.output_dir,
                      args.names))


if __name__ == "__main__":
    main()
