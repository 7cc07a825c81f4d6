"""Lets nnU-Net find nnkd's trainers by name: nnkd_train puts this folder on `nnUNet_extTrainer`.

To run them with stock `nnUNetv2_train -tr nnKDTrainer_Logit`, add this folder to `nnUNet_extTrainer`
yourself (`python -c "import nnkd.trainers, os; print(nnkd.trainers.EXT_TRAINER_FOLDER)"`).

A named run (`nnkd_train --run-name`, or the name nnkd_train derives from the teacher and settings) is the
trainer name `<trainer>@<run name>`: this module serves it as a subclass of that name, so nnU-Net files the run
under `<trainer>@<run name>__<plans>__<configuration>` and finds it again on `--c`, in DDP workers and in
stock `nnUNetv2_train -tr 'nnKDTrainer_Logit@NAME'`.
"""

from functools import lru_cache

from nnkd.run_names import run_name_problem, split_run_trainer_name
from nnkd.trainers.lorkd import nnKDTrainer_LoRKD  # noqa: F401  (not in the single-dataset METHODS)
from nnkd.trainers.methods import METHODS
from nnkd.trainers.nnkd_trainer import nnKDTrainer

# every method's trainer under its class name, from the one table of methods (a new method needs no line here)
globals().update({cls.__name__: cls for cls in METHODS.values()})


@lru_cache(maxsize=None)
def _named_run_class(name: str):
    trainer, run_name = split_run_trainer_name(name)
    if run_name is None or run_name_problem(run_name) is not None:
        return None
    base = globals().get(trainer)
    if base is None:  # an nnKDTrainer subclass of the user's, on nnUNet_extTrainer
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        try:
            base = recursive_find_trainer_class_by_name(trainer)
        except (RuntimeError, AssertionError):
            return None
    if not (isinstance(base, type) and issubclass(base, nnKDTrainer)):
        return None
    return type(name, (base,), {"__module__": __name__, "__qualname__": name,
                                "__doc__": f"{trainer}, filed as run '{run_name}'."})


def __getattr__(name: str):
    """Module attribute lookup (PEP 562), as nnU-Net's trainer search does it: `<trainer>@<run name>`."""
    cls = _named_run_class(name) if "@" in name else None
    if cls is None:
        raise AttributeError(name)
    return cls
