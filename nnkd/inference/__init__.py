"""Using a trained student: prediction with nnU-Net's predictor, export to stock nnU-Net and ONNX."""
