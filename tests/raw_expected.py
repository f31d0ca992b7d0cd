"""What each converter must make of its miniature raw tree (datasets/raw/<name>.py ``sample``).

``EXPECTED["name:protocol"]``: per class (test normal, test anomalous, train normal, masks);
``EXAMPLE["name:protocol"]``: one record that must be in the meta.json, exactly. Written by
hand from the dataset's layout and protocol, not from the converter's output.
"""
EXPECTED = {}
EXAMPLE = {}

# ---- mvtec ----
EXPECTED["mvtec:anomalyclip"] = {"bottle": (1, 2, 2, 2), "carpet": (1, 2, 2, 2)}
EXAMPLE["mvtec:anomalyclip"] = {"img_path": "bottle/test/broken/001.png", "cls_name": "bottle", "anomaly": 1,
                                "mask_path": "bottle/ground_truth/broken/001_mask.png", "specie_name": "broken"}
# ---- end mvtec ----

# ---- visa ----
EXPECTED["visa:anomalyclip"] = {"candle": (1, 2, 2, 2), "pcb1": (1, 2, 2, 2)}
EXAMPLE["visa:anomalyclip"] = {"img_path": "pcb1/test/bad/001.JPG", "mask_path": "pcb1/ground_truth/bad/001_mask.png",
                               "cls_name": "pcb1", "specie_name": "bad", "anomaly": 1}
# ---- end visa ----

# ---- mpdd ----
EXPECTED["mpdd:anomalyclip"] = {**{c: (1, 1, 1, 1) for c in ("bracket_black", "bracket_brown", "bracket_white",
                                                               "connector", "metal_plate")}, "tubes": (1, 2, 1, 2)}
EXAMPLE["mpdd:anomalyclip"] = {"img_path": "tubes/test/scratches/000.png", "cls_name": "tubes", "anomaly": 1,
                               "mask_path": "tubes/ground_truth/scratches/000_mask.png", "specie_name": "scratches"}
# ---- end mpdd ----

# ---- btad ----
EXPECTED["btad:anomalyclip"] = {"01": (1, 2, 2, 2), "02": (1, 2, 2, 2), "03": (1, 2, 2, 2)}
EXAMPLE["btad:anomalyclip"] = {"img_path": "03/test/ko/0001.bmp", "mask_path": "03/ground_truth/ko/0001_mask.bmp",
                               "cls_name": "03", "specie_name": "ko", "anomaly": 1}
# ---- end btad ----

# ---- dtd ----
# ---- end dtd ----

# ---- sdd ----
# ---- end sdd ----

# ---- ksdd2 ----
# ---- end ksdd2 ----

# ---- dagm ----
# ---- end dagm ----

# ---- elpv ----
# ---- end elpv ----

# ---- aitex ----
# ---- end aitex ----

# ---- rsdd ----
# ---- end rsdd ----

# ---- headct ----
# ---- end headct ----

# ---- brainmri ----
# ---- end brainmri ----

# ---- br35h ----
# ---- end br35h ----

# ---- lag ----
# ---- end lag ----

# ---- covid ----
# ---- end covid ----

# ---- isic ----
# ---- end isic ----

# ---- clinicdb ----
# ---- end clinicdb ----

# ---- colondb ----
# ---- end colondb ----

# ---- kvasir ----
# ---- end kvasir ----

# ---- endo ----
# ---- end endo ----

# ---- tn3k ----
# ---- end tn3k ----
