"""Where the gradient of a logit-KD step goes: nnU-Net's Dice and CE terms against the KD term, per class.

    python benchmarks/kd_balance.py FOLD_FOLDER [--checkpoint checkpoint_final.pth | --init | --weights CKPT]
        [--batches 12] [--hp kd_temperature=1 --hp kd_loss=kl] [-o balance.json]

FOLD_FOLDER is the fold folder of an nnkd run that distils logits from a cached teacher
(`nnkd_train … --method logit --teacher-cache`), e.g.
`$nnUNet_results/Dataset990_Synthetic/nnKDTrainer_Logit__nnKDPlans_tiny__3d_fullres/fold_0`; its own
`nnUNet_results` is taken from the path. The run's trainer is built as nnU-Net builds it, its weights are
loaded from the checkpoint (or left at nnU-Net's initialisation with `--init`, or taken from another run
of the same student plans with `--weights`, e.g. the no-KD student), and for `--batches`
training batches (nnU-Net's sampling and augmentation, soft labels augmented with them) the script takes
each loss term on its own and measures, without changing the weights:

- `grad_norm`: the norm of the term's gradient over the student's parameters (what nnU-Net clips at 12);
- `push_<class>`: how hard the term raises the true class's logit on the voxels of that class (the
  negative gradient of the term w.r.t. the full-resolution logits, centred over classes and summed over
  the voxels whose label is that class) — the signal that makes a network find a class;
- for the whole step: the clipping factor min(1, 12 / ‖g‖) nnU-Net's `clip_grad_norm_` applies, and the voxels of
  each class in the label map, in the argmax of the (augmented) soft labels and in the student's argmax — whether
  the teacher's targets or the student make a class larger than the labels do.

`--hp` overrides the run's method hyper-parameters for the measurement (e.g. another temperature or KD
loss), so one checkpoint shows what each setting would do at that point of training.
"""

import argparse
import json
import os
import sys
from pathlib import Path


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fold_folder", type=Path)
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    parser.add_argument("--init", action="store_true", help="measure nnU-Net's freshly initialised student")
    parser.add_argument("--weights", type=Path, help="student weights from this checkpoint of another run")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", type=Path, help="write the measurements as JSON")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    fold_folder = args.fold_folder.resolve()
    run_folder = fold_folder.parent
    results = run_folder.parent.parent
    os.environ["nnUNet_results"] = str(results)  # before nnunetv2.paths is imported
    os.environ.setdefault("nnUNet_n_proc_DA", "0")

    import numpy as np
    import torch

    from nnkd.cache.loading import split_soft_labels
    from nnkd.distill.logits import logits_from_probabilities
    from nnkd.nnunet_compat import finish_loader
    from nnkd.trainers.nnkd_trainer import GRADIENT_CLIP, KDStep
    from nnkd.trainers.settings import coerce_hyperparameter
    from nnkd.teachers.base import TeacherOutput
    from nnkd.run.common import use_nnkd_trainers

    use_nnkd_trainers()
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer_name, plans, configuration = run_folder.name.split("__")
    fold = fold_folder.name.removeprefix("fold_")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    trainer = get_trainer_from_args(run_folder.parent.name, configuration, int(fold) if fold.isdigit() else fold,
                                    trainer_name, plans, device=torch.device("cpu"))
    for pair in args.hp:
        name, _, value = pair.partition("=")
        setattr(trainer, name, coerce_hyperparameter(trainer, name, value))
    if trainer.teacher_cache is None and not (trainer.run_config.teacher or {}).get("cache"):
        sys.exit("kd_balance: the run does not distil from a cached teacher (nnkd_train --teacher-cache)")
    trainer.initialize()
    from nnkd.checkpoints import load_checkpoint

    if args.weights:
        trainer.network.load_state_dict(load_checkpoint(args.weights)["network_weights"])
    elif not args.init:
        trainer.load_checkpoint(str(fold_folder / args.checkpoint))
    trainer.network.train()
    loader, validation = trainer.get_dataloaders()

    labels = {int(v): k for k, v in trainer.dataset_json["labels"].items()}
    classes = sorted(labels)
    deep = trainer.loss.weight_factors if hasattr(trainer.loss, "weight_factors") else (1,)
    seg_loss = trainer.loss.loss if hasattr(trainer.loss, "loss") else trainer.loss
    params = [p for p in trainer.network.parameters() if p.requires_grad]
    rows = []
    for _ in range(args.batches):
        batch = next(loader)
        data, probabilities, valid = split_soft_labels(batch["data"], trainer.image_channels, False)
        teacher = TeacherOutput([], logits_from_probabilities(probabilities), valid)
        targets = batch["target"] if isinstance(batch["target"], list) else [batch["target"]]
        outputs = trainer.network(data)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        full = outputs[0]
        terms = {
            "dice": sum(w * seg_loss.dc(o, t) for w, o, t in zip(deep, outputs, targets) if w),
            "ce": sum(w * seg_loss.ce(o, t[:, 0]) for w, o, t in zip(deep, outputs, targets) if w),
        }
        step = KDStep(data, targets if len(targets) > 1 else targets[0], outputs if len(outputs) > 1 else full,
                      None, teacher)
        terms.update({f"kd_{k}": v for k, v in trainer.distillation_terms(step).items()})
        label_map = targets[0][:, 0].long()
        known = torch.ones_like(label_map, dtype=torch.bool) if valid is None else valid.bool()
        teacher_classes = torch.where(known, probabilities.argmax(1), -1)  # the augmented soft labels' argmax
        student_classes = torch.where(known, full.detach().argmax(1), -1)
        row, total = {}, [torch.zeros_like(p) for p in params]
        for name, loss in terms.items():
            grads = torch.autograd.grad(loss, [full, *params], retain_graph=True, allow_unused=True)
            on_logits = grads[0]
            centred = -(on_logits - on_logits.mean(1, keepdim=True))
            push = {labels[c]: float(centred[:, c][label_map == c].sum()) for c in classes}
            norm = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads[1:] if g is not None)))
            for acc, g in zip(total, grads[1:]):
                if g is not None:
                    acc += g
            row[name] = {"value": float(loss), "grad_norm": norm, **{f"push_{k}": v for k, v in push.items()}}
        step_norm = float(torch.sqrt(sum((g ** 2).sum() for g in total)))
        row["step"] = {"grad_norm": step_norm, "clip_factor": min(1.0, GRADIENT_CLIP / max(step_norm, 1e-12)),
                       "voxels": {labels[c]: int((label_map == c).sum()) for c in classes},
                       "teacher_voxels": {labels[c]: int((teacher_classes == c).sum()) for c in classes},
                       "student_voxels": {labels[c]: int((student_classes == c).sum()) for c in classes}}
        rows.append(row)
    finish_loader(validation)
    finish_loader(loader)

    names = list(rows[0])
    summary = {}
    for name in names:
        keys = rows[0][name].keys()
        summary[name] = {k: float(np.mean([r[name][k] for r in rows])) for k in keys if "voxels" not in k}
    for key in ("voxels", "teacher_voxels", "student_voxels"):
        summary["step"][key] = {k: float(np.mean([r["step"][key][k] for r in rows])) for k in rows[0]["step"][key]}
    settings = trainer.current_settings()
    weights = str(args.weights) if args.weights else None if args.init else str(fold_folder / args.checkpoint)
    result = {"fold_folder": str(fold_folder), "weights": weights,
              "batches": args.batches, "settings": settings, "mean": summary}
    print(f"{trainer_name} {plans} {configuration} fold {fold}, "
          f"weights {weights or 'at initialisation'}, {settings}, mean over {args.batches} batches")
    fg = [labels[c] for c in classes if c]
    print(f"{'term':12s} {'value':>8s} {'‖grad‖':>8s} " + " ".join(f"{'push ' + n:>12s}" for n in fg))
    for name in names[:-1]:
        s = summary[name]
        print(f"{name:12s} {s['value']:8.4f} {s['grad_norm']:8.3f} " + " ".join(f"{s['push_' + n]:12.4f}" for n in fg))
    s = summary["step"]
    print(f"whole step: ‖grad‖ {s['grad_norm']:.3f}, nnU-Net's clipping factor {s['clip_factor']:.3f}")
    for key, what in (("voxels", "label map"), ("teacher_voxels", "teacher (argmax of the augmented soft labels)"),
                      ("student_voxels", "student (argmax)")):
        print(f"voxels per batch, {what}: " + ", ".join(f"{k} {v:.0f}" for k, v in s[key].items()))
    if args.o:
        args.o.parent.mkdir(parents=True, exist_ok=True)
        args.o.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
