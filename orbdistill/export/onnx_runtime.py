"""Running exported ONNX students with onnxruntime. Imports no model code."""

from __future__ import annotations

from typing import Dict

OUTPUT_NAMES = ["energy", "forces", "stress", "energies"]


class OnnxRunner:
    """Run an exported ONNX student with onnxruntime (no model code needed).

    ``runner(graph_tensors_as_numpy) -> dict`` of numpy outputs."""

    def __init__(self, path, device: str = "cpu", num_threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("The ONNX backend needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)") from exc
        opts = ort.SessionOptions()
        # One intra-op thread on the CPU: with several, onnxruntime's ScatterND with
        # reduction="add" (the scatter-sum of messages onto atoms) loses updates when edges
        # of one atom land in different threads; results then differ from run to run by
        # ~1e-3 eV/Å (seen with onnxruntime 1.32). Correctness first.
        if num_threads and int(num_threads) > 1:
            import logging

            logging.getLogger(__name__).warning(
                "onnxruntime runs these models on one CPU thread (its parallel scatter-add is not exact); "
                "ignoring num_threads=%s", num_threads)
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("CUDA was asked for but onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu.")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:
            raise ValueError(f"Cannot load the ONNX file {path}: truncated, corrupt or not ONNX "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}). Re-export the package.") from exc
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.dtype = self.metadata.get("dtype", "float32")

    def __call__(self, feeds: Dict[str, "object"]) -> Dict[str, "object"]:
        out = self.session.run(OUTPUT_NAMES, feeds)
        return dict(zip(OUTPUT_NAMES, out))
