"""Launchers: what nnkd_train, nnkd_train_lorkd and nnkd_tune_teacher do around nnU-Net's `run_training`
(check the request, record the run in its fold folder, hand over to nnU-Net). Trainer classes live in
nnkd.trainers, as nnU-Net keeps its launchers in nnunetv2.run apart from its trainers."""
