"""The pinned contract, tooltips and descriptions, and how the pack loads into a host."""

import sys

from comfy_stub import describe, host, state  # noqa: F401
from node_contract import CONTRACT


def test_node_ids_inputs_and_widget_order_are_pinned(host):
    assert {cls.define_schema().node_id for cls in host.nodes.NODES} == set(CONTRACT)
    for cls in host.nodes.NODES:
        contract = describe(cls)
        assert {k: contract[k] for k in CONTRACT[contract["node_id"]]} == CONTRACT[contract["node_id"]]


def test_every_input_has_a_tooltip_every_node_a_description(host):
    for cls in host.nodes.NODES:
        schema = cls.define_schema()
        assert schema.node_id.startswith("RAD") and schema.display_name and len(schema.description) > 40
        for item in schema.inputs + schema.outputs:
            assert item.tooltip and len(item.tooltip) > 8, (schema.node_id, item.id)


def test_phase_settings_are_advanced(host):
    schema = host.nodes.RADSpatialSchedule.define_schema()
    assert [i.id for i in schema.inputs if i.extra_dict.get("advanced")] == ["curves", "T1", "beta_start",
                                                                              "beta_end"]


def test_custom_sockets_are_never_core_types(host):
    core = {"MODEL", "CLIP", "VAE", "LATENT", "CONDITIONING", "SIGMAS", "SAMPLER"}
    for cls in host.nodes.NODES:
        contract = describe(cls)
        assert not {t for _, t in contract["inputs"] + contract["outputs"]} & core


def test_the_pack_registers_the_rad_folder_with_the_built_in_weights(host):
    folder_paths = sys.modules["folder_paths"]
    paths = folder_paths.get_folder_paths("rad")
    assert paths[0] == str(host.models / "rad")
    assert paths[1].endswith("comfyui_rad/weights")
    assert ".pt" in folder_paths.folder_names_and_paths["rad"][1]


def test_extra_model_paths_entries_survive(host):
    folder_paths = sys.modules["folder_paths"]
    folder_paths.add_model_folder_path("rad", "/data/from-extra-model-paths-yaml")
    try:
        host.nodes.model_loader.register_folder()  # registering again (a reload) keeps it, and no duplicates
        paths = folder_paths.get_folder_paths("rad")
        assert "/data/from-extra-model-paths-yaml" in paths and len(paths) == len(set(paths))
    finally:
        folder_paths.folder_names_and_paths["rad"][0].remove("/data/from-extra-model-paths-yaml")


def test_example_inputs_are_copied_once(host):
    folder = host.models.parent / "input"
    names = sorted(p.name for p in folder.iterdir())
    assert {"rad_example_cat.png", "rad_example_large.jpg", "rad_example_large_mask.png"} <= set(names)
    (folder / "rad_example_cat.png").write_bytes(b"the user's own file")
    host.nodes.copy_example_inputs()
    assert (folder / "rad_example_cat.png").read_bytes() == b"the user's own file"
