"""A grpcio client of the CA's IstioCertificateService (TLS), generated from
meshid's own proto/ca.proto.

Usage: ca_client.py GENERATED_DIR ADDR ROOT_PEM TOKEN AUTHORITY

Makes a P-256 key and CSR with `cryptography`, asks for a certificate with the
service-account token, and prints {"chain": [PEM, ...]} or {"error": ...}.
AUTHORITY is sent as the HTTP/2 :authority (`grpc.default_authority`); the
server's certificate is checked for `localhost` whatever it is.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

import ca_pb2  # noqa: E402
import ca_pb2_grpc  # noqa: E402


def main():
    addr, root_pem, token_file, authority = sys.argv[2:6]
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    with open(root_pem, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    with open(token_file) as f:
        token = f.read().strip()
    options = [
        ("grpc.ssl_target_name_override", "localhost"),
        ("grpc.default_authority", authority),
    ]
    with grpc.secure_channel(addr, creds, options=options) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        try:
            response = stub.CreateCertificate(
                ca_pb2.IstioCertificateRequest(
                    csr=csr.public_bytes(serialization.Encoding.PEM).decode(),
                    validity_duration=3600,
                ),
                metadata=[("authorization", "Bearer " + token)],
                timeout=30,
            )
        except grpc.RpcError as e:
            print(json.dumps({"error": f"{e.code()}: {e.details()}"}), flush=True)
            return 1
    print(json.dumps({"chain": list(response.cert_chain)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
