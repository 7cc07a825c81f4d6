"""Lets nnU-Net find nnkd's trainers by name: nnkd_train puts this folder on `nnUNet_extTrainer`.

To run them with stock `nnUNetv2_train -tr nnKDTrainer_Logit`, add this folder to `nnUNet_extTrainer`
yourself (`python -c "import nnkd.trainers, os; print(nnkd.trainers.EXT_TRAINER_FOLDER)"`).
"""

from nnkd.trainers.lorkd import nnKDTrainer_LoRKD  # noqa: F401
from nnkd.trainers.methods import (nnKDTrainer_CKA, nnKDTrainer_DRD, nnKDTrainer_Feature,  # noqa: F401
                                   nnKDTrainer_Logit, nnKDTrainer_MultiTeacher, nnKDTrainer_NoKD,
                                   nnKDTrainer_TSKD)
from nnkd.trainers.nnkd_trainer import nnKDTrainer  # noqa: F401
