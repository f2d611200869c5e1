"""Keras layer names that mirror Wolfram Language layer paths.

Keras forbids ``/`` in layer names, so a Wolfram layer path ``{node, "a/b/c"}`` becomes the
Keras name ``node__a__b__c`` (separator :data:`SEP` = two underscores). Layers that exist only
in Keras (explicit zero padding, the channels-first permutation before a flatten) take the name
of the Wolfram layer they serve plus a suffix that starts with a single underscore, e.g.
``enc_2__scaleD__1_pad``; :func:`wolfram_path` maps those to ``None``.

Importing this module never imports TensorFlow or Keras.
"""
from __future__ import annotations

SEP = "__"
#: Suffixes of Keras-only helper layers (no arrays, no Wolfram counterpart).
HELPER_SUFFIXES = ("_pad", "_channels_first")


def layer_name(node: str, *path: str | int) -> str:
    """Keras layer name for Wolfram node ``node`` and layer path parts ``path``.

    >>> layer_name("enc_1", "block/con", 1)
    'enc_1__block__con__1'
    """
    parts = [node]
    for part in path:
        parts.extend(str(part).split("/"))
    if any(not p or SEP in p or "/" in p for p in parts):
        raise ValueError(f"invalid layer path parts {node!r}, {path!r}")
    return SEP.join(parts)


def wolfram_path(name: str) -> tuple[str, str] | None:
    """``(node, layer path)`` of a Keras layer name, or None for a Keras-only helper layer.

    >>> wolfram_path("enc_1__block__skip__1")
    ('enc_1', 'block/skip/1')
    >>> wolfram_path("enc_2__scaleD__1_pad") is None
    True
    """
    if name.endswith(HELPER_SUFFIXES) or SEP not in name:
        return None
    node, _, rest = name.partition(SEP)
    return node, rest.replace(SEP, "/")
