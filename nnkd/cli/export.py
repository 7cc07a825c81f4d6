"""nnkd_export: write a trained student as a stock nnU-Net model folder, optionally zipped and as ONNX."""

from nnkd.cli._common import ArgumentParser, add_verbose, run
from nnkd.cli.predict import add_student_arguments, student_from_args


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_export",
                       description="Export a trained student as a stock nnU-Net model folder (trainer "
                                   "nnUNetTrainer, student weights only) that runs where nnkd is not installed; a "
                                   "LoRKD task's experts are fused into plain convolutions.")
    add_student_arguments(p)
    p.add_argument("-o", required=True, metavar="OUT", help="the model folder to write")
    p.add_argument("--zip", action="store_true",
                   help="also write OUT.zip for nnUNetv2_install_pretrained_model_from_zip")
    p.add_argument("--onnx", action="store_true",
                   help="also write student.onnx (dynamic batch and spatial axes) and its preprocessing JSON")
    p.add_argument("--int8", action="store_true",
                   help="with --onnx: also write student.int8.onnx, ONNX Runtime static int8 quantization (QDQ, "
                        "per-channel weights) calibrated on the fold's preprocessed training patches; the fold's "
                        "validation cases are predicted with both models and their Dice printed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty OUT")
    add_verbose(p)
    return p


def _export(args) -> None:
    from pathlib import Path

    from nnkd.inference.export import ExportRequest, export

    export(ExportRequest(student=student_from_args(args), output=Path(args.o), zip=args.zip, onnx=args.onnx,
                         int8=args.int8,
                         overwrite=args.overwrite))


def main(argv=None) -> None:
    run(_export, build_parser(), argv)


if __name__ == "__main__":
    main()
