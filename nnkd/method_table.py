"""The one table of nnkd's distillation methods: method name → trainer class name.

The trainer classes live in nnkd.trainers (nnkd.trainers.methods.METHODS maps the names to them); code that
only needs names (the CLI's help, finding a trained student's folder, deployment) reads this table and imports
no training code.
"""

LORKD_METHOD = "lorkd"
LORKD_TRAINER = "nnKDTrainer_LoRKD"

# single-dataset methods, trained by nnkd_train --method NAME
METHOD_TRAINERS = {
    "none": "nnKDTrainer_NoKD",
    "logit": "nnKDTrainer_Logit",
    "feature": "nnKDTrainer_Feature",
    "cka": "nnKDTrainer_CKA",
    "drd": "nnKDTrainer_DRD",
    "multiteacher": "nnKDTrainer_MultiTeacher",
    "tskd": "nnKDTrainer_TSKD",
}
# every method, LoRKD (nnkd_train_lorkd, several datasets at once) included
ALL_METHOD_TRAINERS = METHOD_TRAINERS | {LORKD_METHOD: LORKD_TRAINER}
