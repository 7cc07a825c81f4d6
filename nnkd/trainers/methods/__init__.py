"""The distillation methods: one thin nnKDTrainer subclass per file, named as in nnkd.method_table (the method
`NAME`'s trainer lives in nnkd/trainers/methods/NAME.py); the mechanics are in nnkd.distill.

Adding a method: its loss in nnkd.distill, its trainer file here, its row in nnkd.method_table.METHOD_TABLE (and
its docs and tests). METHODS maps each table name to its class and gives the class its row's capability flags
(one source: the CLI and the reports read the table without importing training code); nnU-Net finds the classes
through nnkd.trainers.nnunet_ext.
"""

from importlib import import_module

from nnkd.method_table import METHOD_TABLE, METHOD_TRAINERS

METHODS = {name: getattr(import_module(f"{__name__}.{name}"), trainer) for name, trainer in METHOD_TRAINERS.items()}
for _name, _cls in METHODS.items():
    _row = METHOD_TABLE[_name]
    _cls.needs_teacher = _row.teachers != "none"
    _cls.takes_several_teachers = _row.teachers == "several"
    _cls.takes_transfer_set = _row.transfer_set
globals().update({cls.__name__: cls for cls in METHODS.values()})  # `from nnkd.trainers.methods import nnKDTrainer_X`
