"""nnUNetv2_predict_from_modelfolder in a process (and its workers) where `import nnkd` fails."""

import sys


class BlockNnkd:
    def find_spec(self, name, path=None, target=None):
        if name == "nnkd" or name.startswith("nnkd."):
            raise ImportError("nnkd is blocked in this process")


sys.meta_path.insert(0, BlockNnkd())

if __name__ == "__main__":
    try:
        import nnkd  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("nnkd was importable")
    from nnunetv2.inference.predict_from_raw_data import predict_entry_point_modelfolder

    sys.argv = ["nnUNetv2_predict_from_modelfolder", *sys.argv[1:]]
    predict_entry_point_modelfolder()
