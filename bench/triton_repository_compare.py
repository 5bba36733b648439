"""Sends the same requests to two servers of one Triton repository (Triton and kiln) with
tritonclient and prints whether every output is equal, and each model's config as both report
it (instances, max_batch_size, dynamic batching). Used by bench/triton_repository.sh."""

import json
import sys

import numpy as np
import tritonclient.http as httpclient

CASES = [("digits_mlp", "input", 64, ["label", "probabilities"]), ("fraud", "input", 30, ["label", "probabilities"]),
         ("fraud_lr", "input", 30, ["label", "probabilities"]), ("fraud_pair", "TRANSACTION", 30, ["P_GB", "P_LR"])]


def main(triton_url, kiln_url):
    rng = np.random.default_rng(7)
    servers = {"triton": httpclient.InferenceServerClient(triton_url), "kiln": httpclient.InferenceServerClient(kiln_url)}
    report = {"equal": {}, "config": {}}
    for model, input_name, features, outputs in CASES:
        x = (rng.random((7, features), dtype=np.float32) * 4).astype(np.float32)
        got = {}
        for who, client in servers.items():
            i = httpclient.InferInput(input_name, list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            r = client.infer(model, [i], outputs=[httpclient.InferRequestedOutput(o) for o in outputs])
            got[who] = [r.as_numpy(o) for o in outputs]
        # Values must be equal; shapes may differ where config.pbtxt reshapes (Triton answers
        # `dims`, kiln the model's own shape, and warns at load).
        report["equal"][model] = all(np.array_equal(a.ravel(), b.ravel()) for a, b in zip(got["triton"], got["kiln"]))
        report.setdefault("shapes", {})[model] = {
            o: {"triton": list(a.shape), "kiln": list(b.shape)} for o, a, b in zip(outputs, got["triton"], got["kiln"])}
        configs = {who: c.get_model_config(model) for who, c in servers.items()}
        report["config"][model] = {
            who: {"max_batch_size": c.get("max_batch_size"),
                  "instances": sum(g.get("count", 1) for g in c.get("instance_group", [])),
                  "dynamic_batching": "dynamic_batching" in c}
            for who, c in configs.items()}
    print(json.dumps(report, indent=1))
    return 0 if all(report["equal"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
