"""RAD Fill: a classical fill of the masked region from the pixels around it, no model (``comfyui_rad.fill``)."""

from __future__ import annotations

from comfy_api.latest import io

from comfyui_rad.fill import fill, FILLS

from .common import CATEGORY, image_to_bchw, image_to_bhwc, mask_to_bhw


class RADFill(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RADFill",
            display_name="Fill (RAD)",
            category=CATEGORY,
            description="Fills the masked region from the pixels around it, without a model: harmonic = the kept "
                        "pixels' colours diffused smoothly into the hole (Laplace's equation, solved exactly; "
                        "milliseconds for a small hole, seconds to tens of seconds for 4K). A start for any sampler at denoise "
                        "below 1, or a quick object removal. Pixels outside the mask are returned untouched.",
            inputs=[
                io.Image.Input("image", tooltip="The image(s) to fill. One image with many masks, many images with "
                                                "one mask, or as many of each."),
                io.Mask.Input("mask", tooltip="Where to fill (white = 1 = fill), at the image's size. Every pixel "
                                              "above 0 is filled (a soft edge too); at least one pixel must be 0."),
                io.Combo.Input("method", options=list(FILLS), default="harmonic",
                               tooltip="harmonic: each filled pixel is the mean of its neighbours, so the colours "
                                       "around the hole blend smoothly across it (no texture)."),
            ],
            outputs=[
                io.Image.Output("filled", display_name="image", tooltip="The filled images at the input's size; "
                                                                         "pixels where the mask is 0 are the input's."),
                io.Mask.Output("mask_out", display_name="mask", tooltip="The mask, unchanged (batch matched to the "
                                                                        "images): wire it on to a sampler."),
            ],
        )

    @classmethod
    def execute(cls, image, mask, method: str) -> io.NodeOutput:
        image, mask = image_to_bchw(image), mask_to_bhw(mask)
        (images, _, height, width), (masks, mask_height, mask_width) = image.shape, mask.shape
        if (mask_height, mask_width) != (height, width):
            raise ValueError(f"the mask input is {mask_width}x{mask_height} but the image input is {width}x{height}: "
                             "connect a mask made for this image (its Load Image mask), or resize the mask first")
        if 1 not in (images, masks) and images != masks:
            raise ValueError(f"the image input has {images} images and the mask input {masks} masks: give one "
                             "image, one mask, or as many images as masks")
        batch = max(images, masks)
        image, mask = image.expand(batch, -1, -1, -1), mask.expand(batch, -1, -1)
        return io.NodeOutput(image_to_bhwc(fill(image, mask, method, name="the mask input")), mask.contiguous())
