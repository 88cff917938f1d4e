"""``transferkit backbones``: the backbones usable here, or one backbone's tappable layers."""

from __future__ import annotations

from transferkit.jobs._common import format_table

NAME = "backbones"
HELP = "list the backbones usable here"


def add_arguments(parser) -> None:
    parser.add_argument("--layers", dest="layers_of", metavar="BACKBONE",
                        help="list this backbone's tappable layers instead")


def run(layers_of: str | None = None) -> dict:
    """The bundled backbones and the timm models in the local hub cache; with
    ``layers_of``, that backbone's layers (name, channels, spatial size) instead."""
    if layers_of:
        from transferkit.backbones import create_backbone
        from transferkit.backbones.taps import list_layers

        backbone = create_backbone(layers_of)
        size = backbone.data_config["input_size"]
        return {"backbone": layers_of, "input_size": list(size),
                "layers": [vars(info) for info in list_layers(backbone.model, size)]}
    from transferkit.backbones import cached_hub_models, list_backbones

    return {"bundled": list_backbones(), "cached_hub": cached_hub_models(),
            "note": "any timm model name (e.g. timm/resnet50.a1_in1k) works with internet "
                    "access; offline, use --weights FILE --arch NAME."}


def render(summary: dict) -> str:
    if "layers" in summary:
        rows = [["layer", "channels", "spatial"]]
        rows += [[r["name"], str(r["channels"]), "x".join(map(str, r["spatial"])) or "-"]
                 for r in summary["layers"]]
        return (format_table(rows) + f"\ninput size {'x'.join(map(str, summary['input_size']))}; "
                "tap several with --layer a,b or --layer stages|all")
    rows = [["name", "architecture", "available", "note"]]
    for item in summary["bundled"]:
        rows.append([item["name"], item["arch"], "yes" if item["available"] else "no",
                     item["description"] if item["available"] else item["install"]])
    return "\n".join([format_table(rows),
                      "cached timm hub models: " + (", ".join(summary["cached_hub"]) or "none"),
                      summary["note"]])
