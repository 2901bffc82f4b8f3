#!/usr/bin/env python3
"""onnxruntime's side of `cargo xtask bench model terrain`: a long-lived process that times the
terrain UNet on commands from stdin, so that the bench alternates our evaluations with these in
one process pair (same machine state, same inputs).

Usage (a venv with `pip install onnxruntime numpy`; the xtask makes one in tools/reference/.venv):

    python tools/reference/ort_bench.py MODEL.onnx THREADS

onnxruntime's CPU provider with every graph optimisation on (ORT_ENABLE_ALL), intra_op threads =
THREADS, inter_op 1, sequential execution, idle threads not spinning (the bench alternates
with us on the same cores). It prints `ready <onnxruntime version>`, then answers
each line of stdin with one line, `ok ...` or `error <message>`:

    load NOISY.npy SIGMA DIFFICULTY   the input [B,1,128,128] f32 (B from the file), one sigma and
                                      one difficulty for every sample -> `ok B`
    run N                             N evaluations of the loaded input in a row -> `ok SECONDS`
                                      (wall time of all N, perf_counter)
    save OUT.npy                      writes the last output -> `ok`
    quit                              exits (so does end of input)
"""
import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    model, threads = sys.argv[1], int(sys.argv[2])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads sleep instead of spinning: the bench runs our evaluation between
    # two of these, and spinning threads would take its cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feeds = None
    out = None
    print(f"ready {ort.__version__}", flush=True)
    for line in sys.stdin:
        words = line.split()
        try:
            if not words:
                continue
            if words[0] == "quit":
                break
            if words[0] == "load":
                noisy = np.load(words[1]).astype(np.float32)
                batch = noisy.shape[0]
                feeds = {
                    "noisy": noisy.reshape(batch, 1, 128, 128),
                    "sigma": np.full(batch, float(words[2]), dtype=np.float32),
                    "difficulty": np.full(batch, float(words[3]), dtype=np.float32),
                }
                reply = f"ok {batch}"
            elif words[0] == "run":
                if feeds is None:
                    raise ValueError("no input loaded")
                n = int(words[1])
                start = time.perf_counter()
                for _ in range(n):
                    (out,) = session.run(None, feeds)
                reply = f"ok {time.perf_counter() - start:.6f}"
            elif words[0] == "save":
                if out is None:
                    raise ValueError("nothing run yet")
                np.save(words[1], out)
                reply = "ok"
            else:
                raise ValueError(f"unknown command {words[0]!r}")
        except Exception as e:  # noqa: BLE001 - any failure is one answer line, not a hang
            reply = "error " + str(e).replace("\n", " ")
        print(reply, flush=True)


if __name__ == "__main__":
    main()
