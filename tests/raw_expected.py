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
# ---- end visa ----

# ---- mpdd ----
# ---- end mpdd ----

# ---- btad ----
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
