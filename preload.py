"""Our command-line flags, registered by the WebUI before it parses its arguments."""


def preload(parser):
    parser.add_argument(
        "--copylora-presets",
        type=str,
        default=None,
        help="CopyLoRA: block-weight preset file (NAME:v1,v2,... per line); default: block_weight_presets.txt "
        "in the extension folder",
    )
    parser.add_argument(
        "--copylora-dir",
        type=str,
        default=None,
        help="CopyLoRA: folder for training image sets (datasets/) and run previews (outputs/); default: copylora "
        "in the WebUI's data folder",
    )
