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
EXPECTED["dtd:anomalyclip"] = {**{c: (1, 1, 1, 1) for c in ("Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069",
                                                              "Perforated_037", "Stratified_154", "Woven_001",
                                                              "Woven_068", "Woven_104", "Woven_125", "Woven_127")},
                               "Mesh_114": (1, 2, 1, 2)}
EXAMPLE["dtd:anomalyclip"] = {"img_path": "Mesh_114/test/bad/001.png", "cls_name": "Mesh_114",
                              "mask_path": "Mesh_114/ground_truth/bad/001_mask.png",
                              "specie_name": "bad", "anomaly": 1}
# ---- end dtd ----

# ---- sdd ----
# four 20x60 images, three 20-row bands each; one defect (rows 25..30) in kos01/Part1's middle band:
# 1 anomalous band, 11 normal ones split 75/25 (train_test_split: 3 test, 8 train)
EXPECTED["sdd:dra"] = {"SDD": (3, 1, 8, 1)}
EXAMPLE["sdd:dra"] = {"img_path": "SDD/test/defect/kos01_Part1_1.png", "cls_name": "SDD",
                      "mask_path": "SDD/ground_truth/defect/kos01_Part1_1_mask.png",
                      "specie_name": "defect", "anomaly": 1}
# ---- end sdd ----

# ---- ksdd2 ----
# two defective images (train/10001, test/20000) and the first two defect-free ones in (split, name) order
EXPECTED["ksdd2:bayes-pfl"] = {"Metal": (2, 2, 0, 2)}
EXAMPLE["ksdd2:bayes-pfl"] = {"img_path": "Metal/test/good/train_10002.png", "mask_path": "", "cls_name": "Metal",
                              "specie_name": "good", "anomaly": 0}
# ---- end ksdd2 ----

# ---- dagm ----
# per class: Train 0001-0003 (0002 defective), Test 0004-0006 (0005 defective)
# the Test split tested; the Train split's defect-free images (0001, 0003) for training
EXPECTED["dagm:anomalyclip"] = {f"Class{i}": (2, 1, 2, 1) for i in range(1, 11)}
EXAMPLE["dagm:anomalyclip"] = {"img_path": "Class7/test/defect/0005.PNG", "cls_name": "Class7",
                               "mask_path": "Class7/ground_truth/defect/0005_mask.PNG",
                               "specie_name": "defect", "anomaly": 1}
# one clean test image per defective image and split
EXPECTED["dagm:adaclip"] = {f"Class{i}": (2, 2, 2, 2) for i in range(1, 11)}
EXAMPLE["dagm:adaclip"] = {"img_path": "Class3/train/good/0003.PNG", "mask_path": "", "cls_name": "Class3",
                           "specie_name": "good", "anomaly": 0}
EXPECTED["dagm:bayes-pfl"] = {f"Fabric{i}": (2, 2, 0, 2) for i in (1, 2, 3, 4, 5, 7, 8)}  # lowest clean ids 0001, 0003
EXAMPLE["dagm:bayes-pfl"] = {"img_path": "Fabric8/test/good/0003.PNG", "mask_path": "", "cls_name": "Fabric8",
                             "specie_name": "good", "anomaly": 0}
# ---- end dagm ----

# ---- elpv ----
# six normal cells split 75/25 by train_test_split(random_state=42): 2 test, 4 train; 1/3 and 2/3 left out
EXPECTED["elpv:dra"] = {"elpv": (2, 2, 4, 0)}
EXAMPLE["elpv:dra"] = {"img_path": "elpv/test/poly/cell0007.png", "mask_path": "", "cls_name": "elpv",
                       "specie_name": "poly", "anomaly": 1}
# ---- end elpv ----

# ---- aitex ----
# 64x16 strips, 16-px tiles: 2 defect-free strips give 8 normal tiles (75/25: 2 test, 6 train); the two
# defect strips keep only their defect tiles (columns 20..28 -> tile 1; 40..44 -> tile 2)
EXPECTED["aitex:dra"] = {"AITEX": (2, 2, 6, 2)}
EXAMPLE["aitex:dra"] = {"img_path": "AITEX/test/Fuzzyball/0002_019_02_2.png", "cls_name": "AITEX",
                        "mask_path": "AITEX/ground_truth/Fuzzyball/0002_019_02_2_mask.png",
                        "specie_name": "Fuzzyball", "anomaly": 1}
# ---- end aitex ----

# ---- rsdd ----
EXPECTED["rsdd:raw"] = {"type_I": (0, 2, 0, 2), "type_II": (0, 2, 0, 2)}
EXAMPLE["rsdd:raw"] = {"img_path": "type_II/test/defect/rail_2.jpg", "cls_name": "type_II",
                       "mask_path": "type_II/ground_truth/defect/rail_2_mask.png",
                       "specie_name": "defect", "anomaly": 1}
EXPECTED["rsdd:bayes-pfl"] = {"Metal15": (2, 2, 0, 2)}
EXAMPLE["rsdd:bayes-pfl"] = {"img_path": "Metal15/test/anomaly/RSDD_I-metal-defect-000001_0000000003.bmp",
                             "mask_path": "Metal15/ground_truth/anomaly/RSDD_I-metal-defect-000001_0000000003_mask.png",
                             "cls_name": "Metal15", "specie_name": "anomaly", "anomaly": 1}
# ---- end rsdd ----

# ---- headct ----
EXPECTED["headct:adaclip"] = {"head_ct": (2, 2, 0, 0)}
EXAMPLE["headct:adaclip"] = {"img_path": "head_ct/test/hemorrhage/001.png", "mask_path": "", "cls_name": "head_ct",
                             "specie_name": "hemorrhage", "anomaly": 1}
# ---- end headct ----

# ---- brainmri ----
EXPECTED["brainmri:anomalyclip"] = {"brain_ct": (5, 4, 0, 0)}
EXAMPLE["brainmri:anomalyclip"] = {"img_path": "brain_ct/test/good/no 9.png", "mask_path": "", "cls_name": "brain_ct",
                                   "specie_name": "good", "anomaly": 0}
EXPECTED["brainmri:bayes-pfl"] = {"brain_ct": (2, 2, 0, 0)}  # no/*.jpg and yes/*.JPG only
EXAMPLE["brainmri:bayes-pfl"] = {"img_path": "brain_ct/test/tumor/Y109.JPG", "mask_path": "", "cls_name": "brain_ct",
                                 "specie_name": "tumor", "anomaly": 1}
# ---- end brainmri ----

# ---- br35h ----
EXPECTED["br35h:adaclip"] = {"brain": (2, 2, 0, 0)}
EXAMPLE["br35h:adaclip"] = {"img_path": "brain/test/yes/y1.jpg", "mask_path": "", "cls_name": "brain",
                            "specie_name": "yes", "anomaly": 1}
EXPECTED["br35h:anomalyclip"] = {"brain": (2, 3, 0, 0)}  # pred/ counted anomalous
EXAMPLE["br35h:anomalyclip"] = {"img_path": "brain/test/pred/pred0.jpg", "mask_path": "", "cls_name": "brain",
                                "specie_name": "pred", "anomaly": 1}
# ---- end br35h ----

# ---- lag ----
EXPECTED["lag:faprompt"] = {"LAG": (3, 2, 0, 0)}  # the attention maps are not images of the set
EXAMPLE["lag:faprompt"] = {"img_path": "LAG/test/glaucoma/1.jpg", "mask_path": "", "cls_name": "LAG",
                           "specie_name": "glaucoma", "anomaly": 1}
# ---- end lag ----

# ---- covid ----
EXPECTED["covid:anomalyclip"] = {"chest": (3, 2, 0, 0)}  # Lung_Opacity, Viral Pneumonia and the lung masks left out
EXAMPLE["covid:anomalyclip"] = {"img_path": "chest/test/covid/COVID-2.png", "mask_path": "", "cls_name": "chest",
                                "specie_name": "covid", "anomaly": 1}
# ---- end covid ----

# ---- isic ----
EXPECTED["isic:anomalyclip"] = {"skin": (0, 2, 0, 2)}
EXAMPLE["isic:anomalyclip"] = {"img_path": "skin/test/anomaly/ISIC_0000012.jpg", "cls_name": "skin", "anomaly": 1,
                               "mask_path": "skin/ground_truth/anomaly/ISIC_0000012_mask.png", "specie_name": "anomaly"}
# ---- end isic ----

# ---- clinicdb ----
EXPECTED["clinicdb:anomalyclip"] = {"colon": (0, 2, 0, 2)}
EXAMPLE["clinicdb:anomalyclip"] = {"img_path": "colon/test/anomaly/2.tif", "cls_name": "colon",
                                   "mask_path": "colon/ground_truth/anomaly/2_mask.tif",
                                   "specie_name": "anomaly", "anomaly": 1}
# ---- end clinicdb ----

# ---- colondb ----
EXPECTED["colondb:anomalyclip"] = {"colon": (0, 2, 0, 2)}
EXAMPLE["colondb:anomalyclip"] = {"img_path": "colon/test/anomaly/1.png", "cls_name": "colon",
                                  "mask_path": "colon/ground_truth/anomaly/1_mask.png",
                                   "specie_name": "anomaly", "anomaly": 1}
# ---- end colondb ----

# ---- kvasir ----
EXPECTED["kvasir:anomalyclip"] = {"colon": (0, 2, 0, 2)}
EXAMPLE["kvasir:anomalyclip"] = {"img_path": "colon/test/anomaly/cju0qkwl35piu0993l0dewei2.jpg", "cls_name": "colon",
                                 "mask_path": "colon/ground_truth/anomaly/cju0qkwl35piu0993l0dewei2_mask.jpg",
                                 "specie_name": "anomaly", "anomaly": 1}
# ---- end kvasir ----

# ---- endo ----
EXPECTED["endo:anomalyclip"] = {"colon": (0, 2, 0, 2)}
EXAMPLE["endo:anomalyclip"] = {"img_path": "colon/test/anomaly/6eacc283-1446-4682-a36a-5a362ecac3ef.jpg",
                               "mask_path": "colon/ground_truth/anomaly/6eacc283-1446-4682-a36a-5a362ecac3ef_mask.png",
                               "cls_name": "colon", "specie_name": "anomaly", "anomaly": 1}
# ---- end endo ----

# ---- tn3k ----
EXPECTED["tn3k:anomalyclip"] = {"thyroid": (0, 2, 0, 2)}
EXAMPLE["tn3k:anomalyclip"] = {"img_path": "thyroid/test/anomaly/0001.jpg", "cls_name": "thyroid", "anomaly": 1,
                               "mask_path": "thyroid/ground_truth/anomaly/0001_mask.jpg", "specie_name": "anomaly"}
# ---- end tn3k ----
