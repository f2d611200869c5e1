"""The Muscles_leg label table: the one source of every label index, name and colour.

The numbering is QMRITools' ``Muscles_leg`` table: odd indices are the patient's Left, even
indices the Right; 121 (sacrum) and 151 (subcutaneous fat) have no side. Region blocks: lower
leg 1-30, upper leg 31-70, hip 71-92, bones 101-120.

The per-network *training* tables (``N4_Hip``, ``N5_UpperLeg``, ``N6_LowerLeg``) list the
structures a region network predicts as consecutive class indices 1..n (0 = background);
:func:`rename_train_labels` maps them to the final table with a side, by normalised name,
exactly as QMRITools ``ReplaceLabels`` does.

Names: ``Label.name`` keeps QMRITools' spelling, typos included ("Satorius", "Subcutanious
fat"), because the training tables are matched to the final table by name (:func:`normalise_name`).
Everything a person reads -- ``dseg.tsv``, the viewer colour tables, the morphometry tables,
the reports and QC messages -- uses ``Label.display_name`` / ``display_full_name``: the
English name from :data:`NAME_CORRECTIONS`. Indices and abbreviations are the same in both.

Colours: ``Label.rgb`` is QMRITools' colour (``dseg.tsv`` and the viewer tables keep it);
the reports draw with :func:`report_rgb`, a palette in which both sides of a muscle share a
hue, no label is near-white and the bones differ from one another.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SIDES = ("L", "R", "")
SIDE_WORDS = {"L": "Left", "R": "Right", "": ""}


@dataclass(frozen=True)
class Label:
    """One row of the final label table.

    Attributes:
        index: label value in the label map.
        name: structure name without side, QMRITools spelling (e.g. "Satorius"): the key
            for name matching; shown to people as :attr:`display_name`.
        abbreviation: short name with side suffix, e.g. "VL_L".
        side: "L", "R" or "" (no side).
        region: "lower_leg", "upper_leg", "hip", "bone" or "other".
        rgb: display colour (0-255 each).
    """

    index: int
    name: str
    abbreviation: str
    side: str
    region: str
    rgb: tuple[int, int, int]

    @property
    def full_name(self) -> str:
        """QMRITools name with the side word, e.g. "Satorius Left" (the matching key's source;
        people read :attr:`display_full_name`)."""
        side = SIDE_WORDS[self.side]
        return f"{self.name} {side}" if side else self.name

    @property
    def display_name(self) -> str:
        """English name without side, e.g. "Sartorius" (see :data:`NAME_CORRECTIONS`)."""
        return NAME_CORRECTIONS.get(self.name, self.name)

    @property
    def display_full_name(self) -> str:
        """English name with the side word, e.g. "Sartorius Left"."""
        side = SIDE_WORDS[self.side]
        return f"{self.display_name} {side}" if side else self.display_name

    @property
    def stem(self) -> str:
        """Abbreviation without the side suffix, e.g. "VL"."""
        return self.abbreviation[:-2] if self.side else self.abbreviation

    @property
    def key(self) -> str:
        """Normalised name used for matching (see :func:`normalise_name`)."""
        return normalise_name(self.full_name)

    @property
    def color_hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.rgb)

    @property
    def is_muscle(self) -> bool:
        return self.index < 100


#: QMRITools names (``Label.name``) -> the English name shown to people. Typos of the
#: QMRITools label files ("Satorius", "Subcutanious"; "Tensor fascia latae" in
#: Muscles_leg.txt, "Tensor faciae latae" in Muscles_leg_all.txt) and names cut short
#: ("Biceps femoris long", "Bones feet"); every other name is correct as it stands.
NAME_CORRECTIONS: dict[str, str] = {
    "Satorius": "Sartorius",
    "Subcutanious fat": "Subcutaneous fat",
    "Tensor fascia latae": "Tensor fasciae latae",
    "Biceps femoris long": "Biceps femoris long head",
    "Biceps femoris short": "Biceps femoris short head",
    "Bones feet": "Foot bones",
}


def _row(index: int, name: str, abbr: str, side: str, region: str, rgb: tuple[int, int, int]) -> Label:
    return Label(index, name, f"{abbr}_{side}" if side else abbr, side, region, rgb)


LABELS: tuple[Label, ...] = (
    _row(1, "Lateral gastrocnemius", "GL", "L", "lower_leg", (255, 192, 203)),
    _row(2, "Lateral gastrocnemius", "GL", "R", "lower_leg", (127, 255, 212)),
    _row(3, "Medial gastrocnemius", "GM", "L", "lower_leg", (255, 165, 0)),
    _row(4, "Medial gastrocnemius", "GM", "R", "lower_leg", (173, 216, 230)),
    _row(5, "Soleus", "SOL", "L", "lower_leg", (255, 38, 0)),
    _row(6, "Soleus", "SOL", "R", "lower_leg", (143, 188, 143)),
    _row(7, "Plantaris", "PLA", "L", "lower_leg", (220, 20, 60)),
    _row(8, "Plantaris", "PLA", "R", "lower_leg", (255, 93, 65)),
    _row(9, "Popliteus", "POP", "L", "lower_leg", (0, 247, 255)),
    _row(10, "Popliteus", "POP", "R", "lower_leg", (0, 206, 209)),
    _row(11, "Flexor digitorum longus", "FDL", "L", "lower_leg", (255, 250, 205)),
    _row(12, "Flexor digitorum longus", "FDL", "R", "lower_leg", (250, 114, 237)),
    _row(13, "Flexor hallucis longus", "FHL", "L", "lower_leg", (0, 255, 127)),
    _row(14, "Flexor hallucis longus", "FHL", "R", "lower_leg", (128, 0, 128)),
    _row(15, "Tibialis posterior", "TP", "L", "lower_leg", (148, 0, 211)),
    _row(16, "Tibialis posterior", "TP", "R", "lower_leg", (33, 178, 43)),
    _row(17, "Fibularis longus", "FIBL", "L", "lower_leg", (255, 127, 80)),
    _row(18, "Fibularis longus", "FIBL", "R", "lower_leg", (135, 206, 235)),
    _row(19, "Fibularis brevis", "FIBB", "L", "lower_leg", (100, 149, 237)),
    _row(20, "Fibularis brevis", "FIBB", "R", "lower_leg", (240, 230, 140)),
    _row(21, "Tibialis anterior", "TA", "L", "lower_leg", (65, 105, 225)),
    _row(22, "Tibialis anterior", "TA", "R", "lower_leg", (255, 99, 71)),
    _row(23, "Extensor digitorum longus", "EDL", "L", "lower_leg", (50, 205, 50)),
    _row(24, "Extensor digitorum longus", "EDL", "R", "lower_leg", (90, 103, 185)),
    _row(25, "Extensor hallucis longus", "EHL", "L", "lower_leg", (255, 255, 2)),
    _row(26, "Extensor hallucis longus", "EHL", "R", "lower_leg", (128, 0, 0)),
    _row(27, "Fibularis tertius", "FIBT", "L", "lower_leg", (255, 255, 240)),
    _row(28, "Fibularis tertius", "FIBT", "R", "lower_leg", (123, 104, 238)),
    _row(31, "Biceps femoris long", "BFL", "L", "upper_leg", (0, 100, 0)),
    _row(32, "Biceps femoris long", "BFL", "R", "upper_leg", (238, 130, 238)),
    _row(33, "Biceps femoris short", "BFS", "L", "upper_leg", (100, 100, 23)),
    _row(34, "Biceps femoris short", "BFS", "R", "upper_leg", (50, 100, 138)),
    _row(35, "Semimembranosus", "SM", "L", "upper_leg", (48, 57, 176)),
    _row(36, "Semimembranosus", "SM", "R", "upper_leg", (184, 134, 11)),
    _row(37, "Semitendinosus", "ST", "L", "upper_leg", (79, 217, 93)),
    _row(38, "Semitendinosus", "ST", "R", "upper_leg", (240, 255, 240)),
    _row(39, "Adductor magnus", "AM", "L", "upper_leg", (203, 44, 182)),
    _row(40, "Adductor magnus", "AM", "R", "upper_leg", (173, 255, 47)),
    _row(41, "Adductor minimus", "AMI", "L", "upper_leg", (255, 228, 196)),
    _row(42, "Adductor minimus", "AMI", "R", "upper_leg", (218, 165, 32)),
    _row(43, "Adductor longus", "AL", "L", "upper_leg", (245, 255, 250)),
    _row(44, "Adductor longus", "AL", "R", "upper_leg", (255, 160, 122)),
    _row(45, "Adductor brevis", "AB", "L", "upper_leg", (34, 139, 34)),
    _row(46, "Adductor brevis", "AB", "R", "upper_leg", (248, 248, 255)),
    _row(47, "Gracilis", "GR", "L", "upper_leg", (32, 178, 170)),
    _row(48, "Gracilis", "GR", "R", "upper_leg", (255, 20, 147)),
    _row(49, "Iliacus", "IL", "L", "upper_leg", (0, 255, 255)),
    _row(50, "Iliacus", "IL", "R", "upper_leg", (255, 0, 255)),
    _row(51, "Psoas major", "PMA", "L", "upper_leg", (255, 0, 0)),
    _row(52, "Psoas major", "PMA", "R", "upper_leg", (0, 255, 0)),
    _row(53, "Psoas minor", "PMI", "L", "upper_leg", (0, 0, 255)),
    _row(54, "Psoas minor", "PMI", "R", "upper_leg", (255, 255, 0)),
    _row(55, "Vastus lateralis", "VL", "L", "upper_leg", (222, 184, 135)),
    _row(56, "Vastus lateralis", "VL", "R", "upper_leg", (127, 255, 0)),
    _row(57, "Vastus intermedius", "VI", "L", "upper_leg", (139, 69, 19)),
    _row(58, "Vastus intermedius", "VI", "R", "upper_leg", (252, 25, 0)),
    _row(59, "Vastus medialis", "VM", "L", "upper_leg", (255, 255, 224)),
    _row(60, "Vastus medialis", "VM", "R", "upper_leg", (70, 130, 180)),
    _row(61, "Rectus femoris", "RF", "L", "upper_leg", (255, 105, 180)),
    _row(62, "Rectus femoris", "RF", "R", "upper_leg", (255, 218, 185)),
    _row(63, "Satorius", "SA", "L", "upper_leg", (203, 193, 0)),
    _row(64, "Satorius", "SA", "R", "upper_leg", (188, 143, 143)),
    _row(65, "Pectineus", "PEC", "L", "upper_leg", (25, 25, 112)),
    _row(66, "Pectineus", "PEC", "R", "upper_leg", (112, 128, 144)),
    _row(71, "Gluteus maximus", "GMAX", "L", "hip", (205, 133, 63)),
    _row(72, "Gluteus maximus", "GMAX", "R", "hip", (210, 180, 140)),
    _row(73, "Gluteus medius", "GMED", "L", "hip", (102, 205, 170)),
    _row(74, "Gluteus medius", "GMED", "R", "hip", (212, 65, 65)),
    _row(75, "Gluteus minimus", "GMIN", "L", "hip", (0, 139, 139)),
    _row(76, "Gluteus minimus", "GMIN", "R", "hip", (46, 139, 87)),
    _row(77, "Tensor fascia latae", "TFL", "L", "hip", (67, 185, 44)),
    _row(78, "Tensor fascia latae", "TFL", "R", "hip", (0, 0, 205)),
    _row(79, "Piriformis", "PIR", "L", "hip", (255, 228, 225)),
    _row(80, "Piriformis", "PIR", "R", "hip", (106, 90, 205)),
    _row(81, "Obturator internus", "OI", "L", "hip", (165, 42, 42)),
    _row(82, "Obturator internus", "OI", "R", "hip", (255, 250, 250)),
    _row(83, "Obturator externus", "OE", "L", "hip", (221, 160, 221)),
    _row(84, "Obturator externus", "OE", "R", "hip", (233, 150, 122)),
    _row(85, "Gemellus inferior", "GEI", "L", "hip", (147, 112, 219)),
    _row(86, "Gemellus inferior", "GEI", "R", "hip", (218, 112, 214)),
    _row(87, "Gemellus superior", "GES", "L", "hip", (75, 0, 130)),
    _row(88, "Gemellus superior", "GES", "R", "hip", (255, 182, 193)),
    _row(89, "Quadratus femoris", "QF", "L", "hip", (60, 179, 113)),
    _row(90, "Quadratus femoris", "QF", "R", "hip", (255, 235, 205)),
    _row(91, "Quadratus lumborum", "QL", "L", "hip", (70, 130, 100)),
    _row(92, "Quadratus lumborum", "QL", "R", "hip", (200, 120, 60)),
    _row(101, "Ilium", "ILIUM", "L", "bone", (200, 200, 200)),
    _row(102, "Ilium", "ILIUM", "R", "bone", (200, 200, 200)),
    _row(103, "Femur", "FEM", "L", "bone", (200, 200, 200)),
    _row(104, "Femur", "FEM", "R", "bone", (200, 200, 200)),
    _row(105, "Patella", "PAT", "L", "bone", (200, 200, 200)),
    _row(106, "Patella", "PAT", "R", "bone", (200, 200, 200)),
    _row(107, "Tibia", "TIB", "L", "bone", (200, 200, 200)),
    _row(108, "Tibia", "TIB", "R", "bone", (200, 200, 200)),
    _row(109, "Fibula", "FIB", "L", "bone", (200, 200, 200)),
    _row(110, "Fibula", "FIB", "R", "bone", (200, 200, 200)),
    _row(111, "Bones feet", "FOOT", "L", "bone", (200, 200, 200)),
    _row(112, "Bones feet", "FOOT", "R", "bone", (200, 200, 200)),
    _row(121, "Sacrum", "SAC", "", "bone", (160, 160, 160)),
    _row(151, "Subcutanious fat", "SCF", "", "other", (255, 240, 170)),
)

BY_INDEX: dict[int, Label] = {label.index: label for label in LABELS}


def abbreviation_of(index: int) -> str:
    """dseg.tsv abbreviation of a label index: "BG" for 0 (background), "VL_L" for 31, ..."""
    return "BG" if int(index) == 0 else BY_INDEX[int(index)].abbreviation


#: Report palette: (hue in degrees, HLS lightness, HLS saturation) of the patient's LEFT side
#: of each structure, by abbreviation stem; the right side has the same hue and
#: :data:`RIGHT_LIGHTER` more lightness (related colours on both sides). The muscle colours were
#: picked greedily from a grid of saturated hues for the largest smallest CIELAB distance
#: among all 43 muscles (both sides) and from greys, so neighbours in any region differ and
#: none is near-white (lightness <= 0.67 at high saturation). Bones are muted, each with its
#: own hue; subcutaneous fat is amber.
REPORT_HLS: dict[str, tuple[int, float, float]] = {
    # lower leg
    "GL": (240, 0.46, 0.95), "GM": (120, 0.46, 0.95), "SOL": (0, 0.46, 0.95),
    "PLA": (48, 0.46, 0.95), "POP": (318, 0.54, 0.95), "FDL": (210, 0.46, 0.95),
    "FHL": (162, 0.46, 0.95), "TP": (84, 0.30, 0.50), "FIBL": (348, 0.46, 0.50),
    "FIBB": (186, 0.46, 0.95), "TA": (30, 0.30, 0.70), "EDL": (276, 0.30, 0.50),
    "EHL": (72, 0.46, 0.95), "FIBT": (294, 0.46, 0.95),
    # upper leg
    "BFL": (162, 0.30, 0.50), "BFS": (198, 0.30, 0.70), "SM": (48, 0.54, 0.50),
    "ST": (336, 0.46, 0.95), "AM": (144, 0.30, 0.95), "AMI": (324, 0.30, 0.50),
    "AL": (240, 0.30, 0.70), "AB": (12, 0.54, 0.50), "GR": (6, 0.30, 0.70),
    "IL": (96, 0.54, 0.70), "PMA": (30, 0.54, 0.95), "PMI": (222, 0.30, 0.50),
    "VL": (276, 0.46, 0.70), "VI": (174, 0.46, 0.95), "VM": (60, 0.30, 0.70),
    "RF": (18, 0.54, 0.95), "SA": (240, 0.54, 0.50), "PEC": (300, 0.54, 0.50),
    # hip
    "GMAX": (198, 0.54, 0.95), "GMED": (306, 0.30, 0.95), "GMIN": (138, 0.54, 0.50),
    "TFL": (60, 0.54, 0.95), "PIR": (330, 0.46, 0.70), "OI": (174, 0.54, 0.50),
    "OE": (276, 0.46, 0.95), "GEI": (18, 0.38, 0.70), "GES": (30, 0.54, 0.50),
    "QF": (78, 0.46, 0.70), "QL": (42, 0.30, 0.95),
    # bones (muted, one hue each) and fat
    "ILIUM": (0, 0.52, 0.35), "FEM": (215, 0.52, 0.35), "PAT": (150, 0.48, 0.35),
    "TIB": (35, 0.52, 0.40), "FIB": (280, 0.52, 0.30), "FOOT": (60, 0.42, 0.30),
    "SAC": (100, 0.45, 0.25), "SCF": (45, 0.45, 0.85),
}
#: Extra HLS lightness of the right side's colour over the left side's.
RIGHT_LIGHTER = 0.13


def _hls_rgb(hue: float, lightness: float, saturation: float) -> tuple[int, int, int]:
    import colorsys

    return tuple(int(round(255 * v)) for v in colorsys.hls_to_rgb(hue / 360.0, lightness,
                                                                    saturation))


def report_rgb(index: int) -> tuple[int, int, int]:
    """Report colour (0-255 each) of a label value (:data:`REPORT_HLS`); magenta if unknown."""
    label = BY_INDEX.get(int(index))
    if label is None or label.stem not in REPORT_HLS:
        return (255, 0, 255)
    hue, lightness, saturation = REPORT_HLS[label.stem]
    if label.side == "R":
        lightness += RIGHT_LIGHTER
    return _hls_rgb(hue, lightness, saturation)


def report_color_hex(index: int) -> str:
    """:func:`report_rgb` as ``#rrggbb``."""
    return "#{:02x}{:02x}{:02x}".format(*report_rgb(index))


def normalise_name(text: str) -> str:
    """QMRITools name normalisation: drop integer tokens, capitalise each word, join with "_".

    >>> normalise_name("1 Biceps femoris long")
    'Biceps_Femoris_Long'
    >>> normalise_name("Gemellus inferior  Left")
    'Gemellus_Inferior_Left'
    """
    words = [w for w in text.split() if not re.fullmatch(r"[0-9]+", w)]
    return "_".join(w.lower().capitalize() for w in words)


BY_KEY: dict[str, Label] = {label.key: label for label in LABELS}
# the English spellings find the same labels (the QMRITools keys above stay as they are)
BY_KEY.update({normalise_name(label.display_full_name): label for label in LABELS
               if normalise_name(label.display_full_name) not in BY_KEY})

#: Training-label tables of the region networks: class index -> structure name
#: (the release paclet's ``N5_UpperLeg.txt``, ``N6_LowerLeg.txt``, ``N4_Hip.txt``).
TRAIN_TABLES: dict[str, tuple[str, ...]] = {
    "N5_UpperLeg": (
        "Biceps femoris long", "Biceps femoris short", "Semimembranosus", "Semitendinosus",
        "Adductor magnus", "Adductor minimus", "Adductor longus", "Adductor brevis", "Gracilis",
        "Iliacus", "Psoas major", "Vastus lateralis", "Vastus intermedius", "Vastus medialis",
        "Rectus femoris", "Satorius", "Pectineus", "Ilium", "Femur", "Patella",
        "Subcutanious fat",
    ),
    "N6_LowerLeg": (
        "Lateral gastrocnemius", "Medial gastrocnemius", "Soleus", "Plantaris", "Popliteus",
        "Flexor digitorum longus", "Flexor hallucis longus", "Tibialis posterior",
        "Fibularis longus", "Fibularis brevis", "Tibialis anterior", "Extensor digitorum longus",
        "Extensor hallucis longus", "Fibularis tertius", "Patella", "Tibia", "Fibula",
        "Subcutanious fat",
    ),
    "N4_Hip": (
        "Gluteus maximus", "Gluteus medius", "Gluteus minimus", "Tensor fascia latae",
        "Piriformis", "Obturator internus", "Obturator externus", "Quadratus femoris",
        "Quadratus lumborum", "Psoas major", "Iliacus", "Ilium", "Femur", "Sacrum",
    ),
}


def train_label_map(table: str, side: str) -> np.ndarray:
    """Lookup array mapping training classes of ``table`` to final labels for ``side``.

    Args:
        table: a key of :data:`TRAIN_TABLES`, or a side-less table built from final labels.
        side: "L" or "R".

    Returns:
        int array ``m`` of length n_classes with ``m[0] = 0``; ``final = m[train]``.
    """
    if table not in TRAIN_TABLES:
        raise KeyError(f"unknown training label table {table!r}; known: {sorted(TRAIN_TABLES)}")
    if side not in ("L", "R"):
        raise ValueError(f"side must be 'L' or 'R', got {side!r}")
    lookup = [0]
    for name in TRAIN_TABLES[table]:
        key = normalise_name(name)
        label = BY_KEY.get(key) or BY_KEY.get(f"{key}_{SIDE_WORDS[side]}")
        if label is None:
            raise KeyError(f"training label {name!r} of {table} has no entry in the final table")
        lookup.append(label.index)
    return np.asarray(lookup, dtype=np.uint16)


def rename_train_labels(train_labels: np.ndarray, table: str, side: str) -> np.ndarray:
    """Map a training-label volume of a region network to final labels with ``side``.

    Args:
        train_labels: integer array of class indices 0..n (any shape).
        table: training table name, e.g. "N5_UpperLeg".
        side: "L" or "R" (the patient side of the part, decided from geometry).

    Returns:
        uint16 array of the same shape with final label indices (0 stays 0).
    """
    lookup = train_label_map(table, side)
    values = np.asarray(train_labels)
    if values.size and (values.min() < 0 or values.max() >= lookup.size):
        raise ValueError(
            f"training labels outside 0..{lookup.size - 1} for table {table}: "
            f"min {values.min()}, max {values.max()}"
        )
    return lookup[values.astype(np.intp)]


def dseg_tsv_text(labels: tuple[Label, ...] = LABELS) -> str:
    """BIDS ``dseg.tsv`` lookup table: index, name, abbreviation, color, side, region."""
    lines = ["index\tname\tabbreviation\tcolor\tside\tregion"]
    lines.append("0\tBackground\tBG\t#000000\tn/a\tn/a")
    for label in labels:
        side = label.side or "n/a"
        lines.append(
            f"{label.index}\t{label.display_full_name}\t{label.abbreviation}\t{label.color_hex}\t"
            f"{side}\t{label.region}"
        )
    return "\n".join(lines) + "\n"


def itksnap_text(labels: tuple[Label, ...] = LABELS) -> str:
    """ITK-SNAP label description file for the table."""
    lines = [
        "# ITK-SNAP Label Description File (legseg, Muscles_leg numbering)",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        '    0     0    0    0        0  0  0    "Clear Label"',
    ]
    for label in labels:
        r, g, b = label.rgb
        lines.append(f'{label.index:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{label.display_full_name}"')
    return "\n".join(lines) + "\n"


def slicer_ctbl_text(labels: tuple[Label, ...] = LABELS) -> str:
    """3D Slicer colour table (``.ctbl``): ``# Color table file`` header, then one line per
    label ``index name R G B A`` (0-255); names have no spaces (Slicer's rule: underscores).
    Background 0 is listed fully transparent, as Slicer writes it."""
    lines = [
        "# Color table file legseg_labels.ctbl (legseg, Muscles_leg numbering)",
        f"# {len(labels) + 1} values",
        "0 Background 0 0 0 0",
    ]
    for label in labels:
        r, g, b = label.rgb
        lines.append(f"{label.index} {label.display_full_name.replace(' ', '_')} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"


def fsleyes_lut_text(labels: tuple[Label, ...] = LABELS) -> str:
    """FSLeyes lookup table (``.lut``): one line per label ``index R G B name`` with R, G, B
    as floats in 0..1 and the name as all remaining columns, in ascending index order (FSLeyes
    refuses any other). No comment lines (FSLeyes reads every non-empty line as a label) and no
    background line (0 is shown transparent)."""
    lines = []
    for label in labels:
        r, g, b = (value / 255 for value in label.rgb)
        lines.append(f"{label.index} {r:.6f} {g:.6f} {b:.6f} {label.display_full_name}")
    return "\n".join(lines) + "\n"


#: Levels of the ``side`` column of dseg.tsv and the morphometry tables (``n/a``: no side).
SIDE_LEVELS = {"L": "patient's left", "R": "patient's right"}
#: Levels of the ``region`` column of dseg.tsv and the morphometry tables.
REGION_LEVELS = {
    "lower_leg": "muscle of the lower leg (calf)",
    "upper_leg": "muscle of the upper leg (thigh), including iliacus and psoas",
    "hip": "muscle of the hip",
    "bone": "bone",
    "other": "other tissue (subcutaneous fat)",
}


def dseg_json(labels: tuple[Label, ...] = LABELS) -> dict:
    """Data dictionary of ``dseg.tsv``: its columns beyond BIDS' ``index``, ``name``,
    ``abbreviation`` and ``color`` (``side``, ``region``), as BIDS column descriptions.

    No ``Description`` key: by the inheritance principle a top-level ``dseg.json`` also applies
    to every ``*_dseg.nii.gz``, whose own sidecar's ``Description`` would override it (the
    validator warns of that once per label map)."""
    regions = {label.region for label in labels}
    return {
        "side": {
            "LongName": "Patient side",
            "Description": "Patient side of the structure (odd index = L, even = R); n/a for "
                           "the background and the structures without a side.",
            "Levels": dict(SIDE_LEVELS),
        },
        "region": {
            "LongName": "Body region",
            "Description": "Body region of the structure; n/a for the background.",
            "Levels": {key: text for key, text in REGION_LEVELS.items() if key in regions},
        },
    }
