"""Recipes for runDnn / runDnnDebug (``--preset NAME``): named sets of flag values.

A preset only changes defaults: any flag given on the command line wins. What each
reached, in how long, is recorded in the README ("Recipes"), measured with the
command shown there.
"""

PRESETS = {
    "seed000": (
        "the 000 seed's plain net: 784-784-400-10 ReLU, Nesterov momentum 0.99, L2 1e-4, "
        "batch 500; dropout 0.2 on the pixels and the units",
        dict(hidden=[784, 400], activation=["relu"], optimizer="nesterov", momentum=0.99,
             lr=0.01, lr_final=1e-3, l2=1e-4, batch_size=500, epochs=100, dropout=0.2,
             input_dropout=0.2, augment="none")),
    "maxout": (
        "no knowledge of the image: 2 layers of 240 maxout units x 5 pieces, dropout 0.2 "
        "on the pixels and 0.5 on the units, max-norm 1.9365, SGD with momentum 0.7 "
        "(Goodfellow et al. 2013)",
        dict(hidden=[240, 240], maxout=5, input_dropout=0.2, dropout=0.5, max_norm=1.9365,
             optimizer="momentum", momentum=0.7, lr=0.1, lr_final=0.005, batch_size=100,
             epochs=400, augment="none")),
    "deformed": (
        "784-800-800-10 ReLU on images deformed afresh each time they are seen: affine and "
        "elastic (Simard et al. 2003)",
        dict(hidden=[800, 800], augment="elastic", shift=2.0, rotate=10.0, scale=0.1,
             shear=0.1, elastic_alpha=34.0, elastic_sigma=4.0, lr=1e-3, lr_final=1e-5,
             batch_size=128, epochs=100)),
}


def preset_help():
    return "; ".join(f"{name}: {about}" for name, (about, _) in PRESETS.items())


def apply_preset(parser, argv):
    """Set the chosen preset's values as the parser's defaults (before the real parse,
    so that flags on the command line still win)."""
    known, _ = parser.parse_known_args(argv)
    if getattr(known, "preset", None):
        parser.set_defaults(**PRESETS[known.preset][1])
