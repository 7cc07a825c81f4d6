"""nnkd_pseudo_label: a new nnU-Net raw dataset labelled by a teacher, for distilling without annotations."""

from pathlib import Path

from nnkd.cli._common import ArgumentParser, add_verbose, count_value, run


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_pseudo_label",
                       description="Segment images with a teacher and write them, with the teacher's segmentations "
                                   "as labelsTr (labelsTs for test images), as a new nnU-Net raw dataset "
                                   "$nnUNet_raw/DatasetXXX_<name>, ready for nnkd_plan_and_preprocess and nnkd_train. "
                                   "The source images are copied, never modified.")
    p.add_argument("-d", type=int, required=True, metavar="ID", help="ID of the new dataset, e.g. 996")
    p.add_argument("--teacher", required=True, metavar="SPEC",
                   help="teacher spec with logits (nnkd_teachers), e.g. deepbet?axes=2,1,0&size=192,192,192 or "
                        "nnunet:/path/to/model_folder (nnU-Net's own prediction, every trained fold, mirroring)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("-i", type=Path, metavar="FOLDER", help="images named as nnU-Net's imagesTr: CASE_0000.nii.gz")
    source.add_argument("--from-dataset", metavar="ID", help="the imagesTr (and imagesTs) of a raw dataset; its "
                                                             "labels are not read")
    p.add_argument("--test-images", type=Path, metavar="FOLDER", help="with -i: images for imagesTs (labelled too)")
    p.add_argument("--name", default="PseudoLabels", help="dataset name after the ID (default PseudoLabels)")
    p.add_argument("--channel-names", nargs="+", metavar="NAME",
                   help="one per channel, as dataset.json's channel_names (CT selects nnU-Net's CT normalisation); "
                        "default: the source dataset's, else 'image' (z-score)")
    p.add_argument("--labels", nargs="+", metavar="NAME",
                   help="the teacher's classes, background first (default: the names the teacher gives)")
    p.add_argument("--file-ending", default=".nii.gz", help="with -i: the images' file ending (default .nii.gz)")
    p.add_argument("--disable_tta", action="store_true", help="nnU-Net teachers: predict without mirroring (nnU-Net's flag)")
    p.add_argument("--device", "-device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    p.add_argument("-np", type=count_value, default=1, help="processes for nnU-Net's preprocessing and export (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    add_verbose(p)
    return p


def _pseudo_label(args) -> None:
    from nnkd.pipeline.pseudo_labels import PseudoLabelRequest, pseudo_label

    target = pseudo_label(PseudoLabelRequest(
        dataset_id=args.d, teacher=args.teacher, images=args.i, test_images=args.test_images,
        source_dataset=args.from_dataset, name=args.name,
        channel_names={str(i): n for i, n in enumerate(args.channel_names or [])}, labels=args.labels or [],
        file_ending=args.file_ending, mirroring=not args.disable_tta, device=args.device, num_processes=args.np,
        overwrite=args.overwrite))
    print(f"Wrote {target}: the teacher's segmentations as labels (nnkd_pseudo_labels.json says how)")


def main(argv=None) -> None:
    run(_pseudo_label, build_parser(), argv)


if __name__ == "__main__":
    main()
