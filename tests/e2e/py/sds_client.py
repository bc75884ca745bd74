"""A grpcio SDS client, generated from meshid's own proto/, against an agent.

Usage: sds_client.py GENERATED_DIR SOCKET_PATH AUTHORITY ROTATIONS

AUTHORITY is the HTTP/2 :authority to send: "default" leaves grpcio's own
(the percent-encoded socket path); anything else is sent as given through
the `grpc.default_authority` channel option.

Opens StreamSecrets for `default` and `ROOTCA`, ACKs each response, and stops
after ROTATIONS responses whose `default` certificate changed. Prints one JSON
object per response.
"""
import json
import queue
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from envoy.service.secret.v3 import sds_pb2_grpc  # noqa: E402

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def inline(ds):
    return ds.inline_bytes.decode() if ds.HasField("inline_bytes") else ds.inline_string


def main():
    socket, authority, rotations = sys.argv[2], sys.argv[3], int(sys.argv[4])
    options = [] if authority == "default" else [("grpc.default_authority", authority)]
    channel = grpc.insecure_channel("unix:" + socket, options=options)
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    requests = queue.Queue()

    def request(version, nonce):
        return discovery_pb2.DiscoveryRequest(
            version_info=version,
            resource_names=["default", "ROOTCA"],
            type_url=SECRET_TYPE,
            response_nonce=nonce,
        )

    def feed():
        while True:
            r = requests.get()
            if r is None:
                return
            yield r

    requests.put(request("", ""))
    first_chain = None
    changes = 0
    responses = stub.StreamSecrets(feed(), timeout=90)
    try:
        for response in responses:
            got = {}
            for any_ in response.resources:
                s = secret_pb2.Secret()
                any_.Unpack(s)
                if s.HasField("tls_certificate"):
                    got[s.name] = {
                        "chain": inline(s.tls_certificate.certificate_chain),
                        "key_is_pkcs8": "BEGIN PRIVATE KEY" in inline(s.tls_certificate.private_key),
                    }
                elif s.HasField("validation_context"):
                    got[s.name] = {"trusted_ca": inline(s.validation_context.trusted_ca)}
            print(json.dumps({"version": response.version_info, "secrets": got}), flush=True)
            requests.put(request(response.version_info, response.nonce))
            chain = got.get("default", {}).get("chain")
            if first_chain is None:
                first_chain = chain
            elif chain is not None and chain != first_chain:
                changes += 1
                first_chain = chain
            if changes >= rotations:
                break
    finally:
        requests.put(None)
        responses.cancel()
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
