"""py-spiffe (PyPI `spiffe`, on grpcio's C-core) against a meshid agent.

Usage: workload_api.py SOCKET_PATH ROTATIONS

Fetches an X.509 context once, then streams contexts until ROTATIONS new leaf
certificates after the first have arrived. Prints one JSON object per line:
{"fetch": {...}} then {"stream": {...}} per context. Exits non-zero on error.
"""
import json
import sys
import threading

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import TrustDomain, WorkloadApiClient


def describe(ctx):
    svid = ctx.default_svid
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain("cluster.local"))
    roots = sorted(
        c.public_bytes(serialization.Encoding.PEM).decode() for c in bundle.x509_authorities
    ) if bundle else []
    return {
        "spiffe_id": str(svid.spiffe_id),
        "serial": format(svid.leaf.serial_number, "x"),
        "chain_len": len(svid.cert_chain),
        "key_is_p256": isinstance(svid.private_key, ec.EllipticCurvePrivateKey)
        and svid.private_key.curve.name == "secp256r1",
        "roots": roots,
    }


def main():
    socket, rotations = sys.argv[1], int(sys.argv[2])
    with WorkloadApiClient(socket_path="unix://" + socket, default_timeout=30) as client:
        print(json.dumps({"fetch": describe(client.fetch_x509_context())}), flush=True)
        if rotations == 0:
            return 0
        serials = []
        errors = []
        done = threading.Event()

        def on_success(ctx):
            d = describe(ctx)
            print(json.dumps({"stream": d}), flush=True)
            if d["serial"] not in serials:
                serials.append(d["serial"])
            if len(serials) > rotations:
                done.set()

        def on_error(err):
            errors.append(str(err))
            done.set()

        handle = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
        finished = done.wait(60)
        handle.cancel()
        if errors:
            print(json.dumps({"error": errors}), flush=True)
            return 1
        if not finished:
            print(json.dumps({"error": ["no rotation within 60 s"]}), flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
