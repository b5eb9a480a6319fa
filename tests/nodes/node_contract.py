"""The RAD nodes' public contract: node ids, input names and types in order, outputs (as shown), widget order.

Saved workflows store widget values by position and links by input name: once released, nothing here may change
(add new inputs at the end, optional, instead). Checked on the stub host (tests/nodes) and on a real ComfyUI's
/object_info (tests/test_comfy_host.py).
"""

CONTRACT = {
    "RADPerlinMask": {
        "category": "inpaint/RAD",
        "inputs": [("width", "INT"), ("height", "INT"), ("batch_size", "INT"), ("seed", "INT"),
                   ("cell_size_min", "FLOAT"), ("cell_size_max", "FLOAT"), ("octaves", "INT"),
                   ("coverage", "FLOAT"), ("softness", "FLOAT"), ("invert", "BOOLEAN")],
        "outputs": [("mask", "MASK")],
        "widgets": ["width", "height", "batch_size", "seed", "control_after_generate", "cell_size_min",
                    "cell_size_max", "octaves", "coverage", "softness", "invert"],
    },
    "RADModelLoader": {
        "category": "inpaint/RAD",
        "inputs": [("base_model", "COMBO"), ("adapter", "COMBO"), ("strength", "FLOAT"), ("dtype", "COMBO")],
        "outputs": [("rad_model", "RAD_MODEL")],
        "widgets": ["base_model", "adapter", "strength", "dtype"],
    },
    "RADSpatialSchedule": {
        "category": "inpaint/RAD",
        "inputs": [("mask", "MASK"), ("mask_mode", "COMBO"), ("threshold", "FLOAT"), ("steps", "INT"),
                   ("curves", "COMBO"), ("T1", "INT"), ("beta_start", "FLOAT"), ("beta_end", "FLOAT")],
        "outputs": [("schedule", "RAD_SCHEDULE"), ("preview", "IMAGE")],
        "widgets": ["mask_mode", "threshold", "steps", "curves", "T1", "beta_start", "beta_end"],
    },
    "RADSampler": {
        "category": "inpaint/RAD",
        "inputs": [("rad_model", "RAD_MODEL"), ("image", "IMAGE"), ("schedule", "RAD_SCHEDULE"), ("seed", "INT"),
                   ("steps", "INT"), ("sampler", "COMBO"), ("eta", "FLOAT"), ("fit", "COMBO"),
                   ("class_label", "INT"), ("resample", "INT"), ("jump", "INT"), ("start", "COMBO"),
                   ("start_strength", "FLOAT"), ("spacing", "COMBO")],
        "outputs": [("image", "IMAGE"), ("mask", "MASK")],
        "widgets": ["seed", "control_after_generate", "steps", "sampler", "eta", "fit", "class_label", "resample",
                    "jump", "start", "start_strength", "spacing"],
    },
    "RADRePaintSampler": {
        "category": "inpaint/RAD",
        "inputs": [("rad_model", "RAD_MODEL"), ("image", "IMAGE"), ("schedule", "RAD_SCHEDULE"), ("seed", "INT"),
                   ("steps", "INT"), ("jump_length", "INT"), ("jump_n_sample", "INT"), ("fit", "COMBO"),
                   ("class_label", "INT")],
        "outputs": [("image", "IMAGE"), ("mask", "MASK")],
        "widgets": ["seed", "control_after_generate", "steps", "jump_length", "jump_n_sample", "fit", "class_label"],
    },
    "RADFill": {
        "category": "inpaint/RAD",
        "inputs": [("image", "IMAGE"), ("mask", "MASK"), ("method", "COMBO")],
        "outputs": [("image", "IMAGE"), ("mask", "MASK")],
        "widgets": ["method"],
    },
}
